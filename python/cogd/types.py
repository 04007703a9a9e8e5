"""The SDK types model code is written against: runners, ``Input``, ``Path``, ``Secret``.

``cog`` re-exports these names, so ``from cog import BasePredictor, Input`` in an
unchanged Cog model resolves here.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any


class CancelationException(BaseException):  # noqa: N818 - the name is Cog's public API
    """Raised inside a running prediction when it is cancelled.

    A ``BaseException`` so that ``except Exception`` in model code does not
    swallow it by accident.
    """


class BaseRunner:
    """Base class of a model: optional ``setup()``, then ``run(**inputs)`` per prediction."""

    def setup(self) -> None:
        """Load weights and prepare; runs once before the first prediction."""

    def run(self, **kwargs: Any) -> Any:
        """Run one prediction; inputs arrive as keyword arguments."""
        raise NotImplementedError("run() is not implemented")


class BasePredictor:
    """Legacy base class of a model: optional ``setup()``, then ``predict(**inputs)``."""

    def setup(self) -> None:
        """Load weights and prepare; runs once before the first prediction."""

    def predict(self, **kwargs: Any) -> Any:
        """Run one prediction; inputs arrive as keyword arguments."""
        raise NotImplementedError("predict() is not implemented")


class _Missing:
    """Marks an ``Input`` without a default: the input is required."""

    def __repr__(self) -> str:
        return "<required>"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class FieldInfo:
    """What ``Input(...)`` declares about one input; read by the runner and the schema."""

    default: Any = MISSING
    description: str | None = None
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    regex: str | None = None
    choices: list[Any] | None = None
    deprecated: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def required(self) -> bool:
        """True when the input has no default."""
        return self.default is MISSING


def Input(  # noqa: N802 - the name is Cog's public API
    default: Any = MISSING,
    description: str | None = None,
    ge: float | None = None,
    le: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    regex: str | None = None,
    choices: list[Any] | None = None,
    deprecated: bool | None = None,
    **extra: Any,
) -> Any:
    """Declare an input's default and constraints, used as a parameter default."""
    return FieldInfo(
        default=default,
        description=description,
        ge=ge,
        le=le,
        min_length=min_length,
        max_length=max_length,
        regex=regex,
        choices=list(choices) if choices is not None else None,
        deprecated=deprecated,
        extra=extra,
    )


class Path(pathlib.PosixPath):
    """A local file path; file inputs arrive as ``Path`` and file outputs are returned as one."""


class Secret:
    """A sensitive string input, redacted wherever it is printed."""

    __slots__ = ("_secret_value",)

    def __init__(self, secret_value: str | None = None) -> None:
        self._secret_value = secret_value

    def get_secret_value(self) -> str | None:
        """The real value; use it only where it is needed."""
        return self._secret_value

    def __str__(self) -> str:
        return "**********" if self._secret_value else ""

    def __repr__(self) -> str:
        return f"Secret('{self}')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._secret_value == self._secret_value

    def __hash__(self) -> int:
        return hash(self._secret_value)
