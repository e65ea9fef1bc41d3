"""``ptychodus-pinn``: Ptychodus with PtychoPINN (PyTorch) registered, without the plugin shim.

Use it where the ``ptychodus/plugins`` shim is absent (an editable checkout of Ptychodus
itself, a setuptools build). Every argument is passed to ``ptychodus``
(``ptychodus-pinn -b train -i IN -o OUT``, ``ptychodus-pinn`` for the GUI), except
``--list-reconstructors``, which prints the selectable ``[Processing] Algorithm`` keys.
"""

from __future__ import annotations

import sys

from . import install

__all__ = ["main"]


def _list_reconstructors() -> int:
    from ptychodus.model import ModelCore

    with ModelCore() as model:
        for key in model.processing_core.processing_api.available_reconstructors():
            print(key)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Install the registration hooks, then run Ptychodus's own command line."""
    args = sys.argv[1:] if argv is None else list(argv)

    if not install():
        print("ptychodus-pinn: PtychoPINN (PyTorch) could not register with Ptychodus; "
              "see the log above", file=sys.stderr)
        return 1

    if "--list-reconstructors" in args:
        return _list_reconstructors()

    from ptychodus.__main__ import main as ptychodus_main

    sys.argv = [sys.argv[0]] + args
    return int(ptychodus_main())


if __name__ == "__main__":
    sys.exit(main())
