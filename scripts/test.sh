#!/usr/bin/env bash
# Install (if needed) into .venv/ and run the whole test suite, quality tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
exec "${PYTHON:-.venv/bin/python}" -m pytest -q -ra "$@"
