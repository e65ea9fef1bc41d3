#!/usr/bin/env bash
# Install ptychodus-ptychopinn-torch and what its tests need into the project's own virtual
# environment, .venv/ (created when missing), so nothing lands in whichever python3 comes first.
# Takes the local CPU build of torch first when the environment has no torch (any other torch
# request would pull a multi-GB CUDA build), then the package with its extras.
# Experts may set PYTHON=/path/to/python to install into another interpreter instead.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-test}
VENV=.venv

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

if [ -z "${PYTHON:-}" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "setup: python3 >= 3.10 is needed (found: $(python3 --version 2>&1))" >&2
            exit 1
        fi
        echo "setup: creating the virtual environment $VENV/"
        if ! python3 -m venv "$VENV"; then
            echo "setup: 'python3 -m venv' failed; install the venv module (Debian/Ubuntu:" \
                 "apt-get install python3-venv) or set PYTHON=/path/to/python" >&2
            exit 1
        fi
    fi
    PYTHON=$VENV/bin/python
fi

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch (CPU build 2.13.0 where available)"
    "$PYTHON" -m pip install -q "torch==2.13.0" || "$PYTHON" -m pip install -q "torch>=2.2"
fi
echo "setup: installing ptychodus-ptychopinn-torch[$EXTRAS] into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
"$PYTHON" -m pip install -q -e ".[$EXTRAS]"
