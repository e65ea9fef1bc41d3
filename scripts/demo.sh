#!/usr/bin/env bash
# Install (if needed) and run the demo reconstruction on built-in simulated data.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=demo bash scripts/setup.sh
exec ptychopinn-torch demo "$@"
