"""Decorators a model applies to its predictor: ``@cog.concurrent(max=N)``, ``@cog.streaming``."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")

#: The attribute ``concurrent`` sets on the run method (or the class).
CONCURRENCY_ATTR = "_cog_concurrency_max"


def concurrent(fn: Any = None, *, max: int = 1) -> Any:  # noqa: A002 - Cog's keyword name
    """Allow up to ``max`` predictions at once; the run must be ``async def``.

    ``@concurrent(max=N)``, ``@concurrent()`` or bare ``@concurrent`` (one at
    a time), on the run/predict method or on the predictor class.
    ``COG_MAX_CONCURRENCY`` wins over it; it wins over ``cog.yaml``.
    """
    if isinstance(fn, int) and not isinstance(fn, bool):
        fn, max = None, fn  # `concurrent(4)`, as cogd has always taken it
    if isinstance(max, bool) or not isinstance(max, int):
        raise TypeError("concurrent max must be an integer")
    if max < 1:
        raise ValueError("concurrent max must be at least 1")

    def apply(target: T) -> T:
        # More than one slot for a sync run fails setup, saying so, rather
        # than the import (as in Cog): COG_MAX_CONCURRENCY=1 can still serve it.
        setattr(target, CONCURRENCY_ATTR, max)
        return target

    if fn is None:
        return apply
    if not callable(fn):
        raise TypeError("concurrent must be used as @concurrent or @concurrent(max=...)")
    return apply(fn)


def declared_concurrency(*targets: Any) -> int | None:
    """The first ``@concurrent`` setting found on ``targets``."""
    for target in targets:
        value = getattr(target, CONCURRENCY_ATTR, None)
        if value is not None:
            return int(value)
    return None


#: The attribute ``streaming`` sets on the run method (or the class).
STREAMING_ATTR = "_cog_streaming"


def streaming(target: Any = None) -> Any:
    """Mark a run as streaming: clients may follow it as server-sent events.

    Works bare (``@streaming``) and called (``@streaming()``), on the run method
    or on the predictor class.
    """

    def apply(inner: T) -> T:
        setattr(inner, STREAMING_ATTR, True)
        return inner

    if target is None:
        return apply
    return apply(target)


def declared_streaming(*targets: Any) -> bool:
    """Whether any of ``targets`` is marked ``@streaming``."""
    return any(getattr(target, STREAMING_ATTR, False) for target in targets)
