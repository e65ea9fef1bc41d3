"""End to end with the real engine: batch mode, the headless example, Stop, a killed child.

CI-sized: 24-position N=64 scans, 1 epoch, gridsize 1, n_filters_scale 1, CPU; the batch
round trip trains 10 epochs on 128 positions so that its object can be scored against the truth.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy
import pytest

from ptychodus_ptychopinn_torch.config import InferenceConfig
from ptychodus_ptychopinn_torch.integration.runner import WorkerDiedError

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "headless_train_reconstruct.py"
SETTINGS_INI = """\
[Processing]
Algorithm = {algorithm}

[PtychoPINNPyTorchModel]
gridsize = 1
n_filters_scale = 1

[PtychoPINNPyTorchTraining]
nepochs = {epochs}
batch_size = {batch_size}

[PtychoPINNPyTorchExecution]
device = cpu
"""


def write_batch_dir(scan, directory: Path, *, algorithm: str = "ptychopinn (pytorch)_pinn",
                    batch_size: int = 8, epochs: int = 1) -> Path:
    from ptychodus_ptychopinn_torch.simulate import write_scan_files

    write_scan_files(scan, directory)
    (directory / "settings.ini").write_text(
        SETTINGS_INI.format(algorithm=algorithm, batch_size=batch_size, epochs=epochs))
    return directory


@pytest.fixture(scope="module")
def batch_scan():
    """128 positions: enough for a 10-epoch fit to reconstruct a recognisable object."""
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    return simulate_scan(num_positions=128, N=64, seed=3)


def ptychodus_batch(action: str, input_dir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ptychodus", "-b", action, "-i", str(input_dir), "-o",
         str(output_dir)], capture_output=True, text=True, timeout=900)


def test_batch_train_then_reconstruct(batch_scan, tmp_path):
    from ptychodus.api.io import load_product

    from ptychodus_ptychopinn_torch.evaluation import evaluate_object

    tiny_scan = batch_scan
    train_in = write_batch_dir(tiny_scan, tmp_path / "IN", batch_size=4, epochs=10)
    result = ptychodus_batch("train", train_in, tmp_path / "OUT")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    model = tmp_path / "OUT" / "model.ckpt"
    assert model.is_file()

    infer_in = write_batch_dir(tiny_scan, tmp_path / "IN2")
    shutil.copy(model, infer_in / "model.ckpt")
    result = ptychodus_batch("reconstruct", infer_in, tmp_path / "OUT2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Loaded PtychoPINN (PyTorch) model" in result.stdout
    products = sorted((tmp_path / "OUT2").glob("product.*.h5"))
    assert products, list((tmp_path / "OUT2").iterdir())

    truth = tiny_scan.product
    output = load_product(products[-1])
    obj = output.object_.get_layers_flattened()
    assert obj.shape == truth.object_.get_layers_flattened().shape
    assert numpy.all(numpy.isfinite(obj)) and numpy.std(numpy.abs(obj)) > 0
    assert output.object_.get_pixel_geometry() == truth.object_.get_pixel_geometry()
    assert numpy.allclose([output.object_.get_center().x_m, output.object_.get_center().y_m],
                          [truth.object_.get_center().x_m, truth.object_.get_center().y_m])
    assert numpy.allclose(output.probes.get_array(), truth.probes.get_array())
    assert numpy.allclose(output.probe_positions.get_coordinates_x_m(),
                          truth.probe_positions.get_coordinates_x_m())
    # a loaded model's reconstruction reports the refinement passes (default count) as its losses
    passes = InferenceConfig().refine_iterations
    assert 0 < len(output.losses) <= passes
    assert [loss.epoch for loss in output.losses] == list(range(1, len(output.losses) + 1))
    metrics = evaluate_object(obj, truth)  # scored against the simulated truth
    # Measured on this scan with these settings before refinement existed (network only):
    # amplitude SSIM 0.54, phase SSIM 0.20, while a flat object scores about 0.08 in amplitude;
    # the refined object must do at least as well.
    assert metrics["amplitude_ssim"] >= 0.40, metrics
    assert metrics["amplitude_ssim"] >= metrics["flat_amplitude_ssim"] + 0.2, metrics
    assert metrics["phase_ssim"] >= 0.10, metrics


def test_batch_supervised_training_on_refined_labels(tiny_scan, tmp_path):
    """``ptychodus -b train`` with the Supervised reconstructor and ``supervised_labels =
    refined``: the labels are reconstructed from the scan in the worker, and the model says so."""
    import torch

    train_in = write_batch_dir(tiny_scan, tmp_path / "IN", algorithm="ptychopinn (pytorch)_supervised")
    ini = train_in / "settings.ini"
    ini.write_text(ini.read_text().replace("[PtychoPINNPyTorchTraining]\n",
                                           "[PtychoPINNPyTorchTraining]\nsupervised_labels = refined\n"))
    result = ptychodus_batch("train", train_in, tmp_path / "OUT")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = torch.load(tmp_path / "OUT" / "model.ckpt", weights_only=True)
    assert payload["training_config"]["model"]["model_type"] == "supervised"
    assert payload["training_config"]["supervised_labels"] == "refined"
    labels = payload["provenance"]["supervised_labels"]
    assert labels["source"] == "refined" and labels["passes"] > 0


def test_batch_failures_exit_non_zero_and_keep_saved_files(tiny_scan, tmp_path):
    # an algorithm key that names our library but no reconstructor
    unknown = write_batch_dir(tiny_scan, tmp_path / "unknown",
                              algorithm="ptychopinn (pytorch)_unsupervised")
    result = ptychodus_batch("reconstruct", unknown, tmp_path / "out1")
    assert result.returncode != 0
    assert "names the PtychoPINN (PyTorch) library but none of its reconstructors" \
        in result.stdout + result.stderr

    # a setting out of range; the model already in OUT survives
    bad = write_batch_dir(tiny_scan, tmp_path / "bad", batch_size=0)
    out = tmp_path / "out2"
    out.mkdir()
    (out / "model.ckpt").write_bytes(b"earlier model")
    result = ptychodus_batch("train", bad, out)
    assert result.returncode != 0
    assert "[PtychoPINNPyTorchTraining] batch_size" in result.stdout + result.stderr
    assert (out / "model.ckpt").read_bytes() == b"earlier model"

    # a model file of the wrong kind
    wrong = write_batch_dir(tiny_scan, tmp_path / "wrong")
    (wrong / "model.ckpt").write_bytes(b"PK not really")
    result = ptychodus_batch("reconstruct", wrong, tmp_path / "out3")
    assert result.returncode != 0
    assert "is not a PtychoPINN (PyTorch) model file" in result.stdout + result.stderr


def test_headless_example_and_no_torch_in_the_ptychodus_process(tiny_scan, tmp_path):
    from ptychodus.api.io import load_product

    from ptychodus_ptychopinn_torch.simulate import write_scan_files

    data = tmp_path / "data"
    write_scan_files(tiny_scan, data)
    work = tmp_path / "work"
    ini = tmp_path / "settings.ini"
    ini.write_text("[PtychoPINNPyTorchModel]\nn_filters_scale = 1\n"
                   "[PtychoPINNPyTorchTraining]\nbatch_size = 8\n"
                   "[PtychoPINNPyTorchExecution]\ndevice = cpu\n")
    code = textwrap.dedent(f"""
        import runpy, sys
        example = runpy.run_path({str(EXAMPLE)!r})
        rc = example["main"]([{str(data)!r}, {str(work)!r}, "--epochs", "1",
                              "--settings", {str(ini)!r}])
        heavy = sorted(m for m in ("torch", "lightning", "pytorch_lightning") if m in sys.modules)
        print("HEAVY_MODULES", heavy)
        sys.exit(rc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "HEAVY_MODULES []" in result.stdout  # no torch => no CUDA context either
    for name in ("train_data.npz", "model.ckpt", "reconstruction.h5"):
        assert (work / name).is_file(), name
    output = load_product(work / "reconstruction.h5")
    before = tiny_scan.product.object_.get_layers_flattened()
    after = output.object_.get_layers_flattened()
    assert after.shape == before.shape and not numpy.allclose(after, before)


@pytest.fixture()
def subprocess_library(library, small):
    library.options.in_process = None  # follow the setting
    library.options.entry_point = \
        "ptychodus_ptychopinn_torch.integration.child:run_job"
    small(library, epochs=50, subprocess=True)
    return library


def test_stop_ends_training_within_a_batch_and_keeps_the_earlier_model(
        subprocess_library, scan_dir, tmp_path, fakes):
    out = tmp_path / "out"
    earlier = fakes.write_fake_model(out / "model.ckpt")
    before = earlier.read_bytes()
    reconstructor = subprocess_library["PINN"]
    reconstructor.load_model_from_file(earlier)
    flag = {"stop": False}
    subprocess_library.options.stop_requested = lambda: flag["stop"]

    stopped_at = None
    for output in reconstructor.train(scan_dir, out):
        if stopped_at is None and output.progress > 0:
            flag["stop"] = True
            stopped_at = time.monotonic()
    assert stopped_at is not None
    assert time.monotonic() - stopped_at < 30  # one batch plus process teardown
    assert earlier.read_bytes() == before
    assert reconstructor.model_info.path == earlier
    assert not multiprocessing.active_children()


def test_killed_child_is_a_clear_error_in_the_parent(subprocess_library, scan_dir, tmp_path):
    reconstructor = subprocess_library["PINN"]
    out = tmp_path / "out"
    with pytest.raises(WorkerDiedError, match="SIGKILL"):
        for output in reconstructor.train(scan_dir, out):
            if output.progress > 0:
                for child in multiprocessing.active_children():
                    os.kill(child.pid, signal.SIGKILL)
    assert not (out / "model.ckpt").exists()
    assert not reconstructor.is_model_loaded()


def test_explicit_cuda_without_a_gpu_is_an_error(library, tiny_scan, small):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    library.options.entry_point = "ptychodus_ptychopinn_torch.integration.child:run_job"
    small(library)
    library.settings.parameter("Execution", "device").set_value("cuda")
    with pytest.raises(RuntimeError, match="CUDA was requested"):
        list(library["PINN"].reconstruct(tiny_scan.reconstruct_input))
