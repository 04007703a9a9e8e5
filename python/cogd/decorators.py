"""Decorators a model applies to its predictor: ``@cog.concurrent(max=N)``, ``@cog.streaming``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: The attribute ``concurrent`` sets on the run method (or the class).
CONCURRENCY_ATTR = "_cog_concurrency_max"


def concurrent(max: int) -> Callable[[T], T]:  # noqa: A002 - Cog's keyword name
    """Allow up to ``max`` predictions at once; the run must be ``async def``.

    Apply it to the run/predict method or to the predictor class.
    ``COG_MAX_CONCURRENCY`` wins over it; it wins over ``cog.yaml``.
    """
    if not isinstance(max, int) or isinstance(max, bool) or max < 1:
        raise ValueError(f"concurrent(max=...) needs a whole number of at least 1, got {max!r}")

    def apply(target: T) -> T:
        setattr(target, CONCURRENCY_ATTR, max)
        return target

    return apply


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
