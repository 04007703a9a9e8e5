"""cogd: a Cog-compatible prediction server.

The HTTP server and the worker's event loop are Rust (``cogd._native``); this
package holds the Python side: the SDK that model code imports (``cog``
re-exports it, module by module), the runner that loads and calls a model
inside the worker process, and the command-line entry points.
"""

from typing import Any

from cogd import _native, compat
from cogd.decorators import batch, concurrent, streaming
from cogd.model import BaseModel
from cogd.scope import Scope, current_scope
from cogd.types import (
    AsyncConcatenateIterator,
    BasePredictor,
    BaseRunner,
    CancelationException,
    ConcatenateIterator,
    FieldInfo,
    File,
    Input,
    Opaque,
    Path,
    Secret,
    URLFile,
    URLPath,
)

#: The one version string of cogd, which ``cog.__version__`` is too: the
#: workspace's in Cargo.toml, which the wheel and the server carry as well.
__version__: str = _native.__version__

#: The SDK's public names (Cog 0.23.1's ``cog``, plus ``Scope`` and ``batch``), apart from
#: the deprecated ones, which ``__getattr__`` hands out.
__all__ = [
    "__version__",
    "batch",
    "concurrent",
    "current_scope",
    "streaming",
    "AsyncConcatenateIterator",
    "BaseModel",
    "BasePredictor",
    "BaseRunner",
    "CancelationException",
    "ConcatenateIterator",
    "FieldInfo",
    "File",
    "Input",
    "Opaque",
    "Path",
    "Scope",
    "Secret",
    "URLFile",
    "URLPath",
]


def __getattr__(name: str) -> Any:
    """The deprecated ``ExperimentalFeatureWarning`` and ``emit_metric``, each
    announced once on stderr (``cogd.compat.deprecated``)."""
    return compat.deprecated(__name__, name)
