"""Smoke test of benchmarks/memory.py in its CI-sized form: every case runs in its own process,
reports positive peaks, and the markdown section is written (no thresholds on the figures)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_memory_benchmark_quick(tmp_path):
    doc = tmp_path / "performance.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "memory.py"), "--quick", "--out", str(tmp_path),
         "--doc", str(doc), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "memory-cpu.json").read_text())
    kinds = [case["spec"]["kind"] for case in result["cases"]]
    assert {"cli", "datapath", "handoff", "reads"} <= set(kinds)
    for case in result["cases"]:
        assert math.isfinite(case["peak_mib"]) and case["peak_mib"] > 0
    handoff = next(c for c in result["cases"] if c["spec"]["kind"] == "handoff")
    assert handoff["worker"]["source"] == "RawPatterns" and handoff["torch_in_parent"] is False
    assert not list((tmp_path / "work").glob("ptychopinn-torch-patterns-*"))  # hand-off file removed
    text = doc.read_text()
    assert "<!-- memory-cpu:start -->" in text and "<!-- memory-cpu:end -->" in text
