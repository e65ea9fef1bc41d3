"""The patterns of a reconstruction reach the worker through a temporary file, not the pipe,
and the file is gone after the run, whatever ended it (fake workers, spawned children)."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest

from ptychodus_ptychopinn_torch.data.patterns import DiffractionPatterns, RawPatterns
from ptychodus_ptychopinn_torch.data.scan import ScanData
from ptychodus_ptychopinn_torch.integration.handoff import share_patterns
from ptychodus_ptychopinn_torch.integration.protocol import ReconstructJob, TrainJob
from ptychodus_ptychopinn_torch.integration.runner import JobRunner, WorkerDiedError

FAKES = Path(__file__).with_name("fake_workers.py")


def _job(m: int = 300, n: int = 64) -> ReconstructJob:
    rng = np.random.default_rng(0)
    counts = rng.poisson(20.0, size=(m, n, n)).astype(np.uint16)
    bad = np.zeros((n, n), bool)
    bad[0, :5] = True
    counts[:, 0, :5] = 60000  # garbage at the bad pixels reads as 0
    positions = np.column_stack([rng.uniform(40, 160, m), rng.uniform(40, 160, m)])
    scan = ScanData(DiffractionPatterns(counts, holds="counts", bad_pixels=bad),
                    np.ones((n, n), complex), positions, (200, 200), bad_pixels=bad)
    return ReconstructJob(scan=scan, model_path=None, configs={"training": {}})


def _runner(function: str, scratch: Path, **kwargs) -> JobRunner:
    return JobRunner(entry_point=f"{FAKES}:{function}", scratch_dir=scratch, **kwargs)


def test_the_job_pickles_without_its_patterns_and_reads_them_back(tmp_path):
    job = _job()
    patterns = job.scan.amplitudes
    sent, owner = share_patterns(job, tmp_path)
    assert owner is not None and Path(owner.path).parent == tmp_path
    assert Path(owner.path).stat().st_size == patterns.stored_nbytes  # own dtype: uint16
    data = pickle.dumps(sent, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(data) < 64 * 1024 < patterns.stored_nbytes
    received = pickle.loads(data)
    stack = received.scan.amplitudes
    assert isinstance(stack.source, RawPatterns) and stack.checked  # no second pass in the worker
    np.testing.assert_array_equal(stack[:], patterns[:])
    np.testing.assert_array_equal(stack.amplitudes([5, 2, 5]), patterns.amplitudes([5, 2, 5]))
    assert received.scan.mean_counts == job.scan.mean_counts
    np.testing.assert_array_equal(received.scan.positions_px, job.scan.positions_px)
    del received, stack  # the receiver never removes the file
    assert Path(owner.path).exists()
    owner.close()
    owner.close()
    assert not list(tmp_path.iterdir())


def test_jobs_without_patterns_in_memory_are_sent_as_they_are(tmp_path):
    train = TrainJob(input_path=tmp_path, model_path=tmp_path / "m.ckpt", configs={})
    assert share_patterns(train, tmp_path) == (train, None)
    job = _job(m=20)
    sent, owner = share_patterns(job, tmp_path)
    again, second = share_patterns(sent, tmp_path)  # already in a file: pickled by name
    assert again is sent and second is None
    owner.close()


def test_round_trip_through_a_child_and_cleanup_after_success(tmp_path):
    job = _job()
    expected = float(job.scan.amplitudes[:].astype(np.float64).sum())
    events = list(_runner("read_shared_patterns", tmp_path).run(job))
    result = events[-1][1]
    assert result["source"] == "RawPatterns" and Path(result["path"]).parent == tmp_path
    assert result["sum"] == pytest.approx(expected, rel=1e-12)
    assert result["mean_counts"] == job.scan.mean_counts
    assert not list(tmp_path.iterdir())


def test_cleanup_after_a_worker_exception(tmp_path):
    with pytest.raises(ValueError, match="failed after reading the patterns"):
        list(_runner("read_then_fail", tmp_path).run(_job()))
    assert not list(tmp_path.iterdir())


def test_cleanup_after_the_worker_is_killed(tmp_path):
    seen = []
    with pytest.raises(WorkerDiedError, match="SIGKILL"):
        for event in _runner("read_then_die", tmp_path).run(_job()):
            seen.append(event[0])
            assert len(list(tmp_path.iterdir())) == 1  # the file exists while the worker runs
    assert seen == ["progress"]
    assert not list(tmp_path.iterdir())
    assert not multiprocessing.active_children()


def test_cleanup_when_the_consumer_stops_early(tmp_path):
    events = _runner("batches_until_stopped", tmp_path).run(_job())
    assert next(events)[0] == "progress"
    assert len(list(tmp_path.iterdir())) == 1
    events.close()
    assert not list(tmp_path.iterdir())


def test_in_process_runs_read_the_patterns_where_they_are(tmp_path):
    job = _job(m=20)
    runner = JobRunner(in_process=True, entry_point=f"{FAKES}:read_shared_patterns", scratch_dir=tmp_path)
    result = list(runner.run(job))[-1][1]
    assert result["source"] == "ndarray"
    assert not list(tmp_path.iterdir())
