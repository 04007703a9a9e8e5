"""Names of Cog's SDK that cogd itself never uses, kept so that models importing
them load: ``cog.errors``' exceptions, ``cog.mode.Mode``, ``suppress_output``, and
the deprecated ``ExperimentalFeatureWarning`` and ``emit_metric``.

The deprecated two are reached through :func:`deprecated`, which the ``cog``
and ``cogd`` modules call from their module ``__getattr__``: the first time
either name is taken from either module, one line saying so goes to stderr
(printed, not ``warnings.warn``, so ``warnings.filterwarnings("ignore")`` in
the model cannot hide it), as Cog 0.23 does; after that it is silent.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from cogd.scope import current_scope


class CogError(Exception):
    """Base class of Cog's errors."""


class ConfigDoesNotExist(CogError):  # noqa: N818 - Cog's public name
    """There is no cog.yaml."""


class PredictorNotSet(CogError):  # noqa: N818 - Cog's public name
    """cog.yaml names no predictor where one is needed."""


class Mode(enum.Enum):
    """What a model serves: predictions or trainings."""

    PREDICT = "predict"
    TRAIN = "train"

    def __str__(self) -> str:
        return str(self.value)


@contextlib.contextmanager
def suppress_output() -> Iterator[None]:
    """Discard everything written to stdout and stderr inside the block: from
    Python (``sys.stdout``/``sys.stderr``), from C code and from child processes
    (file descriptors 1 and 2). Process-wide, as in Cog."""
    streams = (sys.stdout, sys.stderr)
    for stream in streams:
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with open(os.devnull, "w", encoding="utf-8") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            sys.stdout = sys.stderr = null
            try:
                yield
            finally:
                null.flush()
                sys.stdout, sys.stderr = streams
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


class ExperimentalFeatureWarning(FutureWarning):
    """Deprecated: Cog no longer warns about experimental features.

    Kept so that ``warnings.filterwarnings("ignore", category=ExperimentalFeatureWarning)``
    in older models still runs; remove it from your code.
    """


def emit_metric(name: str, value: Any) -> None:
    """Deprecated: record ``value`` as metric ``name`` of the current run (use
    ``current_scope().record_metric``)."""
    current_scope().record_metric(name, value)


_DEPRECATED: dict[str, tuple[Any, str]] = {
    "ExperimentalFeatureWarning": (
        ExperimentalFeatureWarning,
        "cog: ExperimentalFeatureWarning is deprecated and will be removed in a future "
        "release. Remove `ExperimentalFeatureWarning` from your imports and any associated "
        "`warnings.filterwarnings(...)` calls.",
    ),
    "emit_metric": (
        emit_metric,
        "cog: emit_metric() is deprecated and will be removed in a future release. "
        "Use current_scope().record_metric(name, value) instead.",
    ),
}

#: The deprecated names, for the ``__all__`` of the modules that offer them.
DEPRECATED_NAMES = tuple(_DEPRECATED)

_announced: set[str] = set()
_lock = threading.Lock()


def deprecated(module: str, name: str) -> Any:
    """The deprecated SDK object ``name``, saying once on stderr that it is
    deprecated; ``AttributeError`` (naming ``module``) for any other name."""
    try:
        value, message = _DEPRECATED[name]
    except KeyError:
        raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
    with _lock:
        first = name not in _announced
        _announced.add(name)
    if first:
        print(message, file=sys.stderr)
    return value
