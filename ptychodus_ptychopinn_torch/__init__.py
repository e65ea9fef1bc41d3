"""PtychoPINN in PyTorch + Lightning, packaged as a Ptychodus reconstructor plugin.

Importing this package (and its ``config`` and ``params`` modules) never imports torch:
Ptychodus must start fast and must never create a GPU context in its own process.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
