"""cogd: a Cog-compatible prediction server.

The HTTP server and the worker's event loop are Rust (``cogd._native``); this
package holds the Python side: the SDK types that model code imports (re-exported
by ``cog``), the runner that loads and calls a model inside the worker process,
and the command-line entry points.
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
