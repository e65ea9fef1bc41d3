#!/usr/bin/env bash
# CUDA checks for a GPU machine (sized for one H200, < 8 minutes), run from any directory:
#
#   1. ptychopinn-torch check --device cuda          (versions, GPU, the device chosen)
#   2. benchmarks/cuda_smoke.py                       (train + save/load + reconstruct, fp32 and bf16,
#                                                      gridsize 1 and 2; losses and object finite)
#   3. benchmarks/engine.py --device cuda             (N=64 training/inference/memory, fp32 and bf16)
#   4. benchmarks/device_realistic.py run             (only when .device/scans holds scans exported with
#                                                      `device_realistic.py export`: the realistic self-fit
#                                                      against pty-chi on the GPU, and a capacity fit;
#                                                      pty-chi and pydantic travel as wheels in .whl/)
#   5. benchmarks/suite.py --device cuda --no-ptychi  (throughput matrix, bound, FLOPs and fraction of
#                                                      peak, scaling to 1e5 positions, memory;
#                                                      skipped with SKIP_SUITE=1)
#
# Results go to $OUT when set (the device tool's output folder), else benchmarks/results:
# gpu_check.log, smoke-cuda.json, engine-cuda.json, suite-cuda.json, device-realistic-run.json and
# device-objects-<case>.npz (score them here with `device_realistic.py score`), and performance.md (a copy of
# docs/performance.md with the engine-cuda and suite-cuda sections filled in; copy those sections
# back into docs/performance.md). The project is used from the working tree (PYTHONPATH), not
# installed. Ptychodus is optional: without it the smoke run uses a synthetic scan (no SSIM).
# Wheels of missing packages may travel in .whl/ (see the device README); they are installed to
# /tmp/site first. Every step has its own time limit; the exit status is non-zero if one failed.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 QT_QPA_PLATFORM=offscreen
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
LOG="$RESULTS/gpu_check.log"
: >"$LOG"
[ -f docs/performance.md ] && [ "$RESULTS" != "docs" ] && cp docs/performance.md "$RESULTS/performance.md"
status=0

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s, $(date -u +%H:%M:%S) UTC)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | grep -v -E "LeafSpec|_pytree.py" | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || status=1
}

step check 60 "$PY" -m ptychodus_ptychopinn_torch.cli check --device cuda
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | tee -a "$LOG" || true
step smoke 75 "$PY" benchmarks/cuda_smoke.py --device cuda --positions 512 --epochs 3 --out "$RESULTS"
step engine 90 "$PY" benchmarks/engine.py --device cuda --out "$RESULTS" --doc "$RESULTS/performance.md"
if [ -d .device/scans ]; then
    step realistic "${REALISTIC_LIMIT:-330}" "$PY" benchmarks/device_realistic.py run --device cuda --out "$RESULTS" \
        --capacity-seconds "${CAPACITY_SECONDS:-120}"
fi
[ "${SKIP_SUITE:-0}" = 1 ] || step suite 240 "$PY" benchmarks/suite.py --device cuda --no-ptychi --out "$RESULTS" --doc "$RESULTS/performance.md"
echo "gpu_check finished with status $status" | tee -a "$LOG"
exit $status
