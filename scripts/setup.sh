#!/usr/bin/env bash
# Install ptychodus-ptychopinn-torch and what its tests need into the current Python.
# Takes the local CPU build of torch first when no torch is installed (any other torch
# request would pull a multi-GB CUDA build), then the package with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test}

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    # System libraries PyQt5 needs to run offscreen (GUI tests, screenshots).
    missing=""
    for pkg in libgl1 libegl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3 libglib2.0-0; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "setup: installing system libraries:$missing"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
fi

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch (CPU build 2.13.0 where available)"
    "$PYTHON" -m pip install -q "torch==2.13.0" || "$PYTHON" -m pip install -q "torch>=2.2"
fi
echo "setup: installing ptychodus-ptychopinn-torch[$EXTRAS]"
"$PYTHON" -m pip install -q -e ".[$EXTRAS]"
