"""``cog.types``: the SDK's types, with the names Cog 0.13's module also had
(``Input``, ``Weights``, the cog.yaml types, ``ExperimentalFeatureWarning``)."""

from typing import Any

from cogd import compat
from cogd.types import (
    FILENAME_ILLEGAL_CHARS,
    FILENAME_MAX_LENGTH,
    AsyncConcatenateIterator,
    CogBuildConfig,
    CogConcurrencyConfig,
    CogConfig,
    ConcatenateIterator,
    File,
    Input,
    Item,
    Path,
    Secret,
    URLFile,
    URLPath,
    Weights,
    get_filename,
    get_filename_from_urlopen,
)

__all__ = [
    "FILENAME_ILLEGAL_CHARS",
    "FILENAME_MAX_LENGTH",
    "AsyncConcatenateIterator",
    "CogBuildConfig",
    "CogConcurrencyConfig",
    "CogConfig",
    "ConcatenateIterator",
    "File",
    "Input",
    "Item",
    "Path",
    "Secret",
    "URLFile",
    "URLPath",
    "Weights",
    "get_filename",
    "get_filename_from_urlopen",
]


def __getattr__(name: str) -> Any:
    if name == "PYDANTIC_V2":
        # Cog 0.13 told pydantic 1 from 2 here; asked only when a model reads it.
        try:
            import pydantic
        except ImportError:
            return True
        return not pydantic.VERSION.startswith("1.")
    return compat.deprecated(__name__, name)
