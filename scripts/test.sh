#!/usr/bin/env bash
# Install (if needed) and run the whole test suite, quality tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
exec "${PYTHON:-python3}" -m pytest -q -ra "$@"
