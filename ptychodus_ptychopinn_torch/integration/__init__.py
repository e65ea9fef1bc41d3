"""Ptychodus integration of PtychoPINN (PyTorch): library, reconstructors, worker, GUI page.

``install()`` registers the reconstructor libraries of the ``ptychodus.reconstructors``
entry-point group with Ptychodus 1.7 (which reads no entry points). The ``ptychodus/plugins``
shim calls it automatically; scripts without the shim call it before ``ModelCore()``::

    from ptychodus_ptychopinn_torch.integration import install
    install()

Importing this package imports neither torch, Lightning nor Qt.
"""

from .registration import install, is_installed

__all__ = ["install", "is_installed"]
