"""``reconstruct`` with and without physics refinement: the NPZ keys and the summary line.

Fast: an untrained model file (no training) on the 32-position scan of the CLI fixtures.
"""

from __future__ import annotations

import numpy as np

from ptychodus_ptychopinn_torch import cli


def _reconstruct(npz_path, model, out, *extra: str) -> None:
    argv = ["reconstruct", str(npz_path), "--model", str(model), "--out", str(out),
            "--device", "cpu", *extra]
    assert cli.main(argv) == 0


def test_network_only_writes_the_network_object_and_no_losses(npz_path, untrained_model,
                                                              tmp_path, capsys):
    out = tmp_path / "network.npz"
    _reconstruct(npz_path, untrained_model, out, "--refine-iterations", "0")

    printed = capsys.readouterr().out
    assert "network only" in printed and "refinement: off" in printed
    with np.load(out) as npz:
        assert set(npz.files) == {"object", "object_x_px", "object_y_px", "coverage",
                                  "network_object", "refinement_losses"}
        assert npz["refinement_losses"].dtype == np.float64
        assert npz["refinement_losses"].shape == (0,)
        assert npz["network_object"].dtype == np.complex64
        np.testing.assert_array_equal(npz["network_object"], npz["object"])


def test_refinement_passes_are_written_and_summarised(npz_path, untrained_model, tmp_path,
                                                      capsys):
    out = tmp_path / "refined.npz"
    _reconstruct(npz_path, untrained_model, out, "--refine-iterations", "3")

    captured = capsys.readouterr()
    line = next(l for l in captured.out.splitlines() if l.startswith("refinement:"))
    assert "(network) ->" in line and "3/3 passes" in line and " s " in line
    with np.load(out) as npz:
        assert "probe" not in npz.files
        losses = npz["refinement_losses"]
        assert losses.dtype == np.float64 and losses.shape == (3,)
        assert np.all(np.isfinite(losses))
        assert npz["network_object"].shape == npz["object"].shape
        assert not np.allclose(npz["network_object"], npz["object"])
    # a warning, if any, is printed once: in the summary line, not also as a log record
    for text in line.split("; WARNING: ")[1:]:
        assert text not in captured.err


def test_refine_probe_writes_the_probe(npz_path, untrained_model, tmp_path, capsys):
    out = tmp_path / "probe.npz"
    _reconstruct(npz_path, untrained_model, out, "--refine-iterations", "3", "--refine-probe")

    assert "(object and probe)" in capsys.readouterr().out
    with np.load(out) as npz:
        assert npz["probe"].dtype == np.complex64 and npz["probe"].shape == (64, 64)
        assert npz["refinement_losses"].shape == (3,)


def test_engine_warnings_are_printed_once_in_the_summary_line(npz_path, untrained_model, tmp_path,
                                                               capsys, monkeypatch):
    import dataclasses
    import logging

    from ptychodus_ptychopinn_torch.workflows import engine

    flat = "the reconstruction fits the diffraction data worse than a flat object (test)"
    other = "an unrelated engine warning (test)"
    original = engine.reconstruct_object

    def reconstruct_object(*args, **kwargs):
        result = original(*args, **kwargs)
        log = logging.getLogger("ptychodus_ptychopinn_torch.workflows.engine")
        log.warning(flat)  # the engine logs its warnings and returns them
        log.warning(other)  # ... and may log others that are not in the result
        return dataclasses.replace(result, warnings=(flat,))

    monkeypatch.setattr(engine, "reconstruct_object", reconstruct_object)
    _reconstruct(npz_path, untrained_model, tmp_path / "warned.npz", "--refine-iterations", "1")

    captured = capsys.readouterr()
    line = next(l for l in captured.out.splitlines() if l.startswith("refinement:"))
    assert line.endswith("; WARNING: " + flat)
    assert flat not in captured.err
    assert other in captured.err
