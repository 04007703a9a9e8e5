"""The Cog SDK as model code imports it, served by cogd.

Every name here is re-exported from ``cogd`` so that unchanged Cog models run.
"""

from cogd.decorators import concurrent, streaming
from cogd.types import (
    BasePredictor,
    BaseRunner,
    CancelationException,
    Input,
    Path,
    Secret,
)

__version__ = "0.1.0"

__all__ = [
    "concurrent",
    "streaming",
    "BasePredictor",
    "BaseRunner",
    "CancelationException",
    "Input",
    "Path",
    "Secret",
    "__version__",
]
