#!/usr/bin/env bash
# Install (if needed) into .venv/ and run the demo reconstruction on built-in simulated data.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=demo bash scripts/setup.sh
exec "${PYTHON:-.venv/bin/python}" -m ptychodus_ptychopinn_torch.cli demo "$@"
