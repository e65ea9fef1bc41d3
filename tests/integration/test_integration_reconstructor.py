"""Physics refinement through the Ptychodus reconstructor: product losses, refined probe,
warnings in the log (exactly once), the plain-data result of the worker, Stop while refining."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from pathlib import Path

import numpy
import pytest

from ptychodus_ptychopinn_torch.integration.runner import _loads

FAKES = Path(__file__).with_name("fake_workers.py")
LIBRARY_LOGGER = "ptychodus_ptychopinn_torch"


def _set_refinement(library, passes: int, probe: bool = False) -> None:
    library.settings.parameter("Inference", "refine_iterations").set_value(passes)
    library.settings.parameter("Inference", "refine_probe").set_value(probe)


def _final_product(outputs):
    assert outputs, "the reconstruction yielded nothing"
    return outputs[-1].product


# --- parent side, fake workers --------------------------------------------------------------

@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "subprocess"])
@pytest.mark.parametrize("worker", ["refined_result_logged", "refined_result_silent"])
def test_self_fit_losses_then_refinement_passes_and_one_warning(library, tiny_scan, fakes, caplog,
                                                                in_process, worker):
    caplog.set_level(logging.INFO, logger=LIBRARY_LOGGER)
    library.options.in_process = in_process
    library.options.entry_point = f"{FAKES}:{worker}"
    library.settings.parameter("Training", "nepochs").set_value(2)

    outputs = list(library["PINN"].reconstruct(tiny_scan.reconstruct_input))

    product = _final_product(outputs)
    assert [loss.value for loss in product.losses] == [0.9, 0.8, 0.5, 0.4, 0.3]
    assert [loss.epoch for loss in product.losses] == [1, 2, 3, 4, 5]
    warnings = [r for r in caplog.records if r.getMessage() == fakes.FLAT_WARNING]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].name.startswith(LIBRARY_LOGGER)
    finished = [r.getMessage() for r in caplog.records if "reconstruction finished" in r.getMessage()]
    assert finished and "3 refinement passes (object and probe)" in finished[0]


def test_refined_probe_replaces_the_input_probe_with_its_geometry(library, tiny_scan):
    library.options.entry_point = f"{FAKES}:refined_result_silent"
    source = tiny_scan.reconstruct_input.product

    product = _final_product(list(library["PINN"].reconstruct(tiny_scan.reconstruct_input)))

    before = source.probes.get_probe_no_opr().get_array()[0]
    after = product.probes.get_array()
    assert after.shape == (1, 1, *before.shape)
    numpy.testing.assert_allclose(after[0, 0], 2 * before, rtol=1e-6)
    assert product.probes.get_pixel_geometry() == source.probes.get_pixel_geometry()
    assert product.probe_positions is source.probe_positions
    assert product.metadata is source.metadata


# --- the real worker, in-process --------------------------------------------------------------

def test_pretrained_model_product_losses_are_the_refinement_passes(engine_library, tiny_scan,
                                                                   tiny_model):
    reconstructor = engine_library["PINN"]
    reconstructor.load_model_from_file(tiny_model)
    _set_refinement(engine_library, 3)

    product = _final_product(list(reconstructor.reconstruct(tiny_scan.reconstruct_input)))

    values = [loss.value for loss in product.losses]
    assert len(values) == 3 and all(numpy.isfinite(values))
    assert [loss.epoch for loss in product.losses] == [1, 2, 3]
    assert product.probes is tiny_scan.reconstruct_input.product.probes  # probe not refined


def test_pretrained_model_without_refinement_keeps_its_training_losses(engine_library, tiny_scan,
                                                                       tiny_model):
    reconstructor = engine_library["PINN"]
    reconstructor.load_model_from_file(tiny_model)
    _set_refinement(engine_library, 0)

    product = _final_product(list(reconstructor.reconstruct(tiny_scan.reconstruct_input)))

    assert [loss.value for loss in product.losses] == pytest.approx([0.7, 0.6])


def test_refine_probe_returns_the_refined_probe(engine_library, tiny_scan, tiny_model):
    reconstructor = engine_library["PINN"]
    reconstructor.load_model_from_file(tiny_model)
    _set_refinement(engine_library, 3, probe=True)
    source = tiny_scan.reconstruct_input.product

    product = _final_product(list(reconstructor.reconstruct(tiny_scan.reconstruct_input)))

    before = source.probes.get_probe_no_opr().get_array()[0]
    after = product.probes.get_array()
    assert after.shape == (1, 1, *before.shape)
    assert not numpy.allclose(after[0, 0], before)  # updated from pass 3 on (probe_start = 2)
    assert product.probes.get_pixel_geometry() == source.probes.get_pixel_geometry()


def test_worker_result_is_plain_data(tiny_scan, tiny_model):
    """The parent unpickles results without torch: every value is plain Python or numpy."""
    from ptychodus_ptychopinn_torch.config import (
        ExecutionConfig,
        InferenceConfig,
        ModelConfig,
        TrainingConfig,
        config_to_dict,
    )
    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.integration.child import run_job
    from ptychodus_ptychopinn_torch.integration.protocol import ReconstructJob

    model = ModelConfig(N=64, n_filters_scale=1)
    configs = {
        "training": config_to_dict(TrainingConfig(model=model, nepochs=1)),
        "inference": config_to_dict(InferenceConfig(model=model, refine_iterations=2,
                                                    refine_probe=True)),
        "execution": config_to_dict(ExecutionConfig(accelerator="cpu")),
    }
    job = ReconstructJob(scan=scan_from_reconstruct_input(tiny_scan.reconstruct_input),
                         model_path=Path(tiny_model), configs=configs)
    events = []
    run_job(job, lambda *event: events.append(event), lambda: False)

    result = [e for e in events if e[0] == "result"]
    assert len(result) == 1
    payload = _loads(pickle.dumps(result[0]))[1]  # the parent's torch-refusing unpickler
    refinement = payload["refinement"]
    assert refinement["iterations"] == 2 and refinement["passes_run"] == 2
    assert len(refinement["losses"]) == 2
    assert all(type(v) is float for v in refinement["losses"])
    for key in ("network_loss", "flat_loss", "final_loss", "seconds", "scale"):
        assert type(refinement[key]) is float, key
    assert all(type(w) is str for w in payload["warnings"])
    assert payload["probe"].dtype == numpy.complex64 and payload["probe"].shape == (64, 64)
    assert payload["object"].dtype == numpy.complex64


def test_stop_during_refinement_ends_the_run_without_a_result(engine_library, tiny_scan,
                                                              tiny_model, monkeypatch, caplog):
    """Stop pressed while the refinement runs: the worker stops before its next batch."""
    from ptychodus_ptychopinn_torch.refinement import RefinementCancelled
    from ptychodus_ptychopinn_torch.workflows import engine

    caplog.set_level(logging.INFO, logger=LIBRARY_LOGGER)
    refining = threading.Event()
    cancelled: list[bool] = []
    original = engine.refine_object

    def refine_object(*args, should_stop=None, **kwargs):
        def stop_when_asked() -> bool:  # hold the first batch until the parent asks to stop
            refining.set()
            deadline = time.monotonic() + 20.0
            while not should_stop() and time.monotonic() < deadline:
                time.sleep(0.01)
            return should_stop()

        try:
            return original(*args, should_stop=stop_when_asked, **kwargs)
        except RefinementCancelled:
            cancelled.append(True)
            raise

    monkeypatch.setattr(engine, "refine_object", refine_object)
    engine_library.options.stop_requested = refining.is_set
    reconstructor = engine_library["PINN"]
    reconstructor.load_model_from_file(tiny_model)
    _set_refinement(engine_library, 1000)

    outputs = list(reconstructor.reconstruct(tiny_scan.reconstruct_input))

    assert cancelled == [True]
    assert outputs == []  # no result product: the input object stays as it was
    assert any("reconstruction stopped" in r.getMessage() for r in caplog.records)
