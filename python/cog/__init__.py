"""The Cog SDK as model code imports it, served by cogd.

Every name here is re-exported from ``cogd`` so that unchanged Cog models run.
"""

from cogd.decorators import concurrent, streaming
from cogd.scope import Scope, current_scope
from cogd.types import (
    AsyncConcatenateIterator,
    BaseModel,
    BasePredictor,
    BaseRunner,
    CancelationException,
    ConcatenateIterator,
    File,
    Input,
    Opaque,
    Path,
    Secret,
    URLPath,
)

__version__ = "0.1.0"

__all__ = [
    "concurrent",
    "current_scope",
    "streaming",
    "AsyncConcatenateIterator",
    "BaseModel",
    "BasePredictor",
    "BaseRunner",
    "CancelationException",
    "ConcatenateIterator",
    "File",
    "Input",
    "Opaque",
    "Path",
    "Scope",
    "Secret",
    "URLPath",
    "__version__",
]
