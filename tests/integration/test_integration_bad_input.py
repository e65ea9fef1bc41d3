"""Bad input gets a clear, logged error and never overwrites what was saved."""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import pytest
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.product import Product
from ptychodus.api.reconstruct import ReconstructInput

from ptychodus_ptychopinn_torch.integration.settings import SettingsError

FAKES = Path(__file__).with_name("fake_workers.py")


def _wrong_files(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a model at all")
    empty_zip = tmp_path / "empty.ckpt"
    with zipfile.ZipFile(empty_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    lightning = tmp_path / "lightning.ckpt"  # a different payload (e.g. a Lightning checkpoint)
    with zipfile.ZipFile(lightning, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": {}, "epoch": 3}))
    evil = tmp_path / "evil.ckpt"  # a pickle that would run code
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("archive/data.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")
    return {"garbage": garbage, "empty": empty_zip, "lightning": lightning, "evil": evil}


@pytest.mark.parametrize("kind", ["garbage", "empty", "lightning", "evil"])
def test_model_file_of_the_wrong_kind(library, tmp_path, kind, caplog, fakes):
    good = fakes.write_fake_model(tmp_path / "good.ckpt")
    reconstructor = library["PINN"]
    reconstructor.load_model_from_file(good)
    with pytest.raises(ValueError, match="not a PtychoPINN \\(PyTorch\\) model file") as info:
        reconstructor.load_model_from_file(_wrong_files(tmp_path)[kind])
    assert "weights_only" not in str(info.value)
    if kind == "evil":
        assert "(it refers to os.system), and loading it would run code from it" in str(info.value)
    assert reconstructor.model_info.path == good  # the earlier model is untouched
    assert any(r.levelno == logging.ERROR and r.name == "ptychodus_ptychopinn_torch"
               for r in caplog.records)


def test_missing_model_file(library, tmp_path):
    with pytest.raises(FileNotFoundError):
        library["PINN"].load_model_from_file(tmp_path / "nope.ckpt")
    assert not library["PINN"].is_model_loaded()


def test_newer_model_format_asks_for_an_upgrade(library, tmp_path, fakes):
    path = fakes.write_fake_model(tmp_path / "future.ckpt", format_version=99)
    with pytest.raises(ValueError, match="upgrade"):
        library["PINN"].load_model_from_file(path)


def test_training_directory_without_data(library, tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "exported.npz").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="train_data.npz") as info:
        list(library["PINN"].train(empty, out))
    assert "rename the exported file" in str(info.value)
    assert not out.exists()
    assert any("training failed" in r.getMessage() for r in caplog.records)


def test_failed_training_keeps_an_existing_model(library, scan_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.ckpt").write_bytes(b"precious")
    library.options.entry_point = f"{FAKES}:raise_value_error"
    with pytest.raises(ValueError):
        list(library["PINN"].train(scan_dir, out))
    assert (out / "model.ckpt").read_bytes() == b"precious"


def test_probe_size_differs_from_patterns(library, tiny_scan, tmp_path):
    ri = tiny_scan.reconstruct_input
    p = ri.product
    probes = ProbeSequence(p.probes.get_array()[..., 16:48, 16:48].copy(), None,
                           p.probes.get_pixel_geometry())
    bad = ReconstructInput(ri.diffraction_patterns, ri.bad_pixels,
                           Product(p.metadata, p.probe_positions, probes, p.object_, []))
    with pytest.raises(ValueError, match="probe shape \\(32, 32\\)"):
        list(library["PINN"].reconstruct(bad))
    target = tmp_path / "train_data.npz"
    with pytest.raises(ValueError, match="probe shape"):
        library["PINN"].export_training_data(target, bad)
    assert not target.exists()


def test_settings_out_of_range_fail_before_any_work(library, tiny_scan, scan_dir, tmp_path):
    library.settings.parameter("Training", "batch_size").set_value(0)
    with pytest.raises(SettingsError, match="batch_size"):
        list(library["PINN"].reconstruct(tiny_scan.reconstruct_input))
    with pytest.raises(SettingsError, match="batch_size"):
        list(library["PINN"].train(scan_dir, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_supervised_needs_a_model(library, tiny_scan):
    with pytest.raises(ValueError, match="Supervised reconstructor needs a trained model"):
        list(library["Supervised"].reconstruct(tiny_scan.reconstruct_input))


def test_model_for_other_pattern_size(library, tiny_scan, tmp_path, fakes):
    from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig

    path = fakes.write_fake_model(tmp_path / "m128.ckpt",
                                     TrainingConfig(model=ModelConfig(N=128)))
    library["PINN"].load_model_from_file(path)
    with pytest.raises(ValueError, match="128x128 patterns but this scan has 64x64"):
        list(library["PINN"].reconstruct(tiny_scan.reconstruct_input))


def test_save_model_without_a_model(library, tmp_path):
    with pytest.raises(RuntimeError, match="no PtychoPINN \\(PyTorch\\) model"):
        library["PINN"].save_model(tmp_path / "model.ckpt")
    assert not (tmp_path / "model.ckpt").exists()


def test_parent_reader_matches_the_checkpoint_format():
    checkpoint = pytest.importorskip("ptychodus_ptychopinn_torch.checkpoint")
    from ptychodus_ptychopinn_torch.integration import modelfile

    assert modelfile.MODEL_FORMAT == checkpoint.FORMAT
    assert modelfile.MODEL_FORMAT_VERSION == checkpoint.FORMAT_VERSION


def test_training_npz_convention_comes_from_the_data_or_the_setting(library, tiny_scan, tmp_path,
                                                                    caplog):
    import numpy

    from ptychodus_ptychopinn_torch.data.io import save_training_npz

    data = tmp_path / "data"
    path = save_training_npz(data / "train_data.npz", tiny_scan.reconstruct_input)
    with numpy.load(path) as npz:
        arrays = dict(npz)
    counts = arrays["diff3d"].astype(numpy.float64)
    arrays["diff3d"] = counts * 0.37  # scaled intensities: the data cannot decide
    numpy.savez(path, **arrays)
    library.options.entry_point = f"{FAKES}:load_training_data"
    reconstructor = library["PINN"]
    caplog.set_level(logging.INFO)
    with pytest.raises(ValueError, match="cannot tell whether 'diff3d' holds raw counts"):
        list(reconstructor.train(data, tmp_path / "out"))
    assert any("training failed" in r.getMessage() for r in caplog.records)

    library.settings.parameter("Training", "diffraction").set_value("counts")
    list(reconstructor.train(data, tmp_path / "out"))
    assert "reading 'diff3d' as raw counts (given)" in caplog.text
    expected = numpy.sqrt(counts.max() * 0.37)
    assert f"largest amplitude {expected:.6g}" in caplog.text

    library.settings.parameter("Training", "diffraction").set_value("sqrt")
    with pytest.raises(SettingsError, match=r"\[PtychoPINNPyTorchTraining\] diffraction = 'sqrt'"):
        list(reconstructor.train(data, tmp_path / "out"))
