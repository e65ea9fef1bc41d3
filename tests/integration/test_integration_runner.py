"""The worker runner: event streaming, log relay, errors, child death, Stop (fake workers)."""

from __future__ import annotations

import logging
import multiprocessing
import time
from pathlib import Path

import pytest

from ptychodus_ptychopinn_torch.integration.protocol import TrainJob
from ptychodus_ptychopinn_torch.integration.runner import JobRunner, WorkerDiedError, WorkerError

FAKES = Path(__file__).with_name("fake_workers.py")
JOB = TrainJob(input_path=Path("."), model_path=Path("model.ckpt"), configs={})


def runner(function: str, *, in_process: bool = False, **kwargs) -> JobRunner:
    return JobRunner(in_process=in_process, entry_point=f"{FAKES}:{function}", **kwargs)


@pytest.mark.parametrize("in_process", [False, True], ids=["subprocess", "in-process"])
def test_events_arrive_in_order_and_logs_reach_the_library_logger(in_process, caplog):
    caplog.set_level(logging.INFO, logger="ptychodus_ptychopinn_torch")
    events = list(runner("epochs", in_process=in_process).run(JOB))

    assert [e[0] for e in events] == ["epoch", "epoch", "epoch", "result"]
    assert [e[1]["epoch"] for e in events[:3]] == [1, 2, 3]
    assert events[-1][1] == {"value": 42}
    own = [r for r in caplog.records if "fake worker pid" in r.getMessage()]
    assert own and own[0].name.startswith("ptychodus_ptychopinn_torch")
    if not in_process:  # the child's foreign loggers are relayed under the library logger
        foreign = [r for r in caplog.records if "foreign logger line" in r.getMessage()]
        assert foreign and foreign[0].name == "ptychodus_ptychopinn_torch.worker"


@pytest.mark.parametrize("in_process", [False, True], ids=["subprocess", "in-process"])
def test_worker_value_error_is_reraised_with_its_type_and_message(in_process):
    with pytest.raises(ValueError, match="probe is 32x32"):
        list(runner("raise_value_error", in_process=in_process).run(JOB))


def test_unknown_worker_exception_becomes_worker_error():
    with pytest.raises(WorkerError, match="WeirdError: something odd") as info:
        list(runner("raise_custom").run(JOB))
    assert "Traceback" in info.value.worker_traceback


def test_killed_child_is_a_clear_error_not_a_hang():
    start = time.monotonic()
    seen = []
    with pytest.raises(WorkerDiedError, match="SIGKILL") as info:
        for event in runner("die_after_epoch").run(JOB):
            seen.append(event[0])
    assert seen == ["epoch"]
    assert "Nothing was saved" in str(info.value)
    assert time.monotonic() - start < 60
    assert not multiprocessing.active_children()


def test_stop_request_ends_the_worker_within_one_batch():
    flag = {"stop": False}
    run = runner("batches_until_stopped", stop_requested=lambda: flag["stop"])
    tags = []
    stop_time = None
    for event in run.run(JOB):
        tags.append(event[0])
        if event[0] == "progress" and event[1] >= 3 and stop_time is None:
            flag["stop"] = True
            stop_time = time.monotonic()
    assert tags[-1] == "stopped"
    assert time.monotonic() - stop_time < 5.0
    assert not multiprocessing.active_children()


def test_closing_the_iterator_stops_the_child():
    events = runner("batches_until_stopped").run(JOB)
    assert next(events)[0] == "progress"
    events.close()
    assert not multiprocessing.active_children()


def test_a_worker_that_ignores_stop_is_terminated():
    run = runner("ignore_stop", stop_grace_s=1.0, terminate_grace_s=1.0)
    events = run.run(JOB)
    assert next(events)[0] == "progress"
    start = time.monotonic()
    events.close()
    assert time.monotonic() - start < 10
    assert not multiprocessing.active_children()


def test_bad_entry_point_is_reported():
    with pytest.raises(ValueError, match="module:function"):
        list(JobRunner(in_process=True, entry_point="no_colon").run(JOB))


def test_stop_ends_a_worker_that_ignores_it():
    run = runner("ignore_stop", stop_requested=lambda: True, stop_grace_s=1.0,
                 terminate_grace_s=1.0)
    start = time.monotonic()
    events = list(run.run(JOB))
    assert [e[0] for e in events] == ["progress"]
    assert time.monotonic() - start < 30
    assert not multiprocessing.active_children()
