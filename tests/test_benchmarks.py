"""Smoke tests of the benchmarks: both scripts run in their CI-sized form and write sane JSON.

No thresholds on speed: only the presence of the expected keys and positive, finite numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


def _numbers(value, path=""):
    """Yield (path, number) for every number in a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def _positive(doc, *keys):
    for key in keys:
        found = [(p, v) for p, v in _numbers(doc) if p.endswith("." + key)]
        assert found, f"no {key} in the results"
        for path, value in found:
            assert math.isfinite(value) and value > 0, f"{path} = {value}"


def _run(script: str, out: Path) -> dict:
    doc_path = out / "performance.md"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--device", "cpu", "--out", str(out),
         "--doc", str(doc_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = script.replace(".py", "")
    result = json.loads((out / f"{name}-cpu.json").read_text())
    text = doc_path.read_text()
    assert f"<!-- {name}-cpu:start -->" in text and f"<!-- {name}-cpu:end -->" in text
    for path, value in _numbers(result):
        assert math.isfinite(value) and value >= 0, f"{path} = {value}"
    return result


@pytest.mark.slow
def test_benchmarks_quick(tmp_path):
    engine = _run("engine.py", tmp_path)
    assert engine["benchmark"] == "engine" and engine["quick"] is True
    assert {c["gridsize"] for c in engine["cases"]} == {1, 2}
    for case in engine["cases"]:
        assert {"lightning", "loop", "lightning_over_loop_time"} <= set(case["training"])
        assert "memory" in case["inference"]
    _positive(engine, "samples_per_s", "patterns_per_s", "seconds", "host_peak_mib", "lightning_over_loop_time")

    suite = _run("suite.py", tmp_path)
    assert suite["benchmark"] == "suite"
    assert {"machine", "peak", "flops", "inference", "training", "scaling", "ptychi"} <= set(suite)
    assert suite["inference"] and suite["training"]
    assert suite["scaling"]["network"] and suite["scaling"]["pipeline"]
    assert suite["ptychi"]["status"] == "skipped"
    _positive(suite, "matmul_fp32_gflops", "forward_gflop_per_group", "training_gflop_per_group",
              "patterns_per_s", "samples_per_s", "end_to_end_over_bare", "achieved_gflops", "fraction_of_peak",
              "us_per_pattern", "host_peak_mib")
    # The markdown sections of both runs live side by side in one file.
    text = (tmp_path / "performance.md").read_text()
    assert text.count(":start -->") == 2


def test_markdown_section_is_replaced(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import harness
    finally:
        sys.path.remove(str(BENCHMARKS))
    doc = tmp_path / "perf.md"
    doc.write_text("# P\n\nintro\n\n<!-- x:start -->\nold\n<!-- x:end -->\n\ntail\n")
    harness.update_markdown(doc, "x", "new table")
    harness.update_markdown(doc, "y", "other")
    text = doc.read_text()
    assert "old" not in text and "new table" in text and "intro" in text and "tail" in text
    assert text.index("<!-- y:start -->") > text.index("tail")
    harness.update_markdown(doc, "y", "again")
    assert doc.read_text().count("<!-- y:start -->") == 1 and "again" in doc.read_text()


def test_missing_ptychi_environment_is_reported(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import suite
    finally:
        sys.path.remove(str(BENCHMARKS))
    import torch

    plan = suite.make_plan(True, torch.device("cpu"))
    result = suite.compare_ptychi(plan, torch.device("cpu"), tmp_path / "no-such-python")
    assert result["status"] == "unavailable" and "venv" in result["reason"]
