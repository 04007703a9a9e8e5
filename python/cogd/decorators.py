"""Decorators a model applies to its predictor: ``@cog.concurrent(max=N)``,
``@cog.streaming`` and ``@cog.batch(max_size=N, max_wait_ms=T)``."""

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


#: The attribute ``batch`` sets on the run method (or the class).
BATCH_ATTR = "_cog_batch"


class BatchSettings:
    """What ``@batch`` declares: at most ``max_size`` predictions per call, and
    how long (``max_wait_ms``) the first waits for others to join it."""

    __slots__ = ("max_size", "max_wait_ms")

    def __init__(self, max_size: int, max_wait_ms: float) -> None:
        self.max_size = max_size
        self.max_wait_ms = max_wait_ms

    def __repr__(self) -> str:
        return f"BatchSettings(max_size={self.max_size}, max_wait_ms={self.max_wait_ms})"


def batch(fn: Any = None, *, max_size: int = 16, max_wait_ms: float = 10) -> Any:
    """Run up to ``max_size`` predictions in one call of the run method.

    The annotations still describe one prediction (the schema, validation and
    defaults are as without the decorator); at run time each parameter
    receives a list with one item per prediction, and the method returns a
    list with one output per prediction, in the same order. An exception
    instance in that list fails its prediction alone; a raised exception
    fails them all. The server starts a batch once ``max_size`` predictions
    wait, or ``max_wait_ms`` after the first arrived (0: at once, with
    whatever waits). ``COG_MAX_BATCH_SIZE`` and ``COG_BATCH_WAIT_MS`` win
    over both. Generators, ``@streaming`` runs and training functions cannot
    be batched.

    ``@batch(max_size=..., max_wait_ms=...)``, ``@batch()`` or bare
    ``@batch``, on the run/predict method or on the predictor class.
    """
    if isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError("batch max_size must be an integer")
    if max_size < 1:
        raise ValueError("batch max_size must be at least 1")
    if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)):
        raise TypeError("batch max_wait_ms must be a number")
    if not max_wait_ms >= 0 or max_wait_ms == float("inf"):
        raise ValueError("batch max_wait_ms must be a finite number, at least 0")
    settings = BatchSettings(max_size, float(max_wait_ms))

    def apply(target: T) -> T:
        setattr(target, BATCH_ATTR, settings)
        return target

    if fn is None:
        return apply
    if not callable(fn):
        raise TypeError("batch must be used as @batch or @batch(max_size=..., max_wait_ms=...)")
    return apply(fn)


def declared_batch(*targets: Any) -> BatchSettings | None:
    """The first ``@batch`` setting found on ``targets``."""
    for target in targets:
        value = getattr(target, BATCH_ATTR, None)
        if isinstance(value, BatchSettings):
            return value
    return None
