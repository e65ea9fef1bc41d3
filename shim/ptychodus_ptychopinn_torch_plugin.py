"""Ptychodus plugin shim installed into ``ptychodus/plugins/`` by ptychodus-ptychopinn-torch.

Ptychodus 1.7 discovers reconstructor libraries only from a hard-coded list; this shim uses
its plugin hook to register PtychoPINN (PyTorch). Any exception here would crash Ptychodus at
start-up, so everything is caught and logged.
"""

import logging


def register_plugins(registry) -> None:  # noqa: ANN001 - Ptychodus PluginRegistry
    try:
        from ptychodus_ptychopinn_torch.integration import install

        install()
    except Exception:  # pragma: no cover - must never propagate into Ptychodus
        logging.getLogger("ptychodus_ptychopinn_torch").exception(
            "PtychoPINN (PyTorch) could not register with Ptychodus"
        )
