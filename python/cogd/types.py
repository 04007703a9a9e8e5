"""The SDK types model code is written against: runners, ``Input``, ``Path``, ``Secret``,
``File``, ``URLPath``, ``BaseModel``, ``Opaque`` and the concatenating iterators.

``cog`` re-exports these names, so ``from cog import BasePredictor, Input`` in an
unchanged Cog model resolves here. They are plain markers and containers: what
each means for the schema lives in ``cogd.schema``, how values become them (and
back) in ``cogd.coercion``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cogd.scope import ScopeAttribute, current_scope


class CancelationException(BaseException):  # noqa: N818 - the name is Cog's public API
    """Raised inside a running prediction when it is cancelled.

    A ``BaseException`` so that ``except Exception`` in model code does not
    swallow it by accident.
    """


class _Recording:
    """What runners share: ``self.scope`` and ``self.record_metric``."""

    #: The current run's scope (``cogd.scope.current_scope()``): its
    #: ``context`` and ``metrics``.
    scope = ScopeAttribute()

    def record_metric(self, name: str, value: Any, mode: str = "replace") -> None:
        """Record a custom metric of the current prediction (``"replace"``,
        ``"incr"``/``"increment"`` or ``"append"``); does nothing outside a run. See
        ``cogd.scope.Scope.record_metric``."""
        current_scope().record_metric(name, value, mode)


class BaseRunner(_Recording):
    """Base class of a model: optional ``setup()``, then ``run(**inputs)`` per prediction.

    An optional ``healthcheck()`` (sync or async, returning a bool) is called
    on each ``/health-check``; false, an exception or a timeout reports the
    model ``UNHEALTHY``.
    """

    def setup(self) -> None:
        """Load weights and prepare; runs once before the first prediction."""

    def run(self, **kwargs: Any) -> Any:
        """Run one prediction; inputs arrive as keyword arguments."""
        raise NotImplementedError("run() is not implemented")


class BasePredictor(_Recording):
    """Legacy base class of a model: optional ``setup()``, then ``predict(**inputs)``
    (and an optional ``healthcheck()``, as on ``BaseRunner``)."""

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
    accept: str | None = None
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
    accept: str | None = None,
    **extra: Any,
) -> Any:
    """Declare an input's default and constraints, used as a parameter default.

    ``accept`` (Path/File inputs) lists the media types or extensions a client
    should send, as in HTML's ``accept`` attribute; it is published in the
    schema as ``x-cog-accept`` and not enforced.
    """
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
        accept=accept,
        extra=extra,
    )


class Path(pathlib.PosixPath):
    """A local file path; file inputs arrive as ``Path`` and file outputs are returned as one."""


def _filename_of(url: str) -> str:
    """The last path segment of ``url`` (``file`` for a data URI or an empty path)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "data":
        return "file"
    name = urllib.parse.unquote(os.path.basename(parsed.path))
    return name.replace("\x00", "_") or "file"


class URLPath(Path):
    """A ``Path`` input that is still a URL (``http(s)://`` or ``data:``).

    It passes ``isinstance(x, pathlib.Path)`` checks, and ``str()`` gives back
    the URL it came from, so nothing about the value is lost before the file
    step fetches it; as a path it is just the URL's file name.
    """

    source: str

    def __new__(cls, source: str, filename: str | None = None) -> URLPath:
        return super().__new__(cls, filename or _filename_of(source))

    def __init__(self, source: str, filename: str | None = None) -> None:
        if sys.version_info >= (3, 12):  # pathlib keeps its segments in __init__ there
            super().__init__(filename or _filename_of(source))
        self.source = source

    def __str__(self) -> str:
        # Paths that pathlib derives from this one (parent, with_suffix...) are
        # built without __init__ and are plain names.
        return getattr(self, "source", None) or super().__str__()

    def __repr__(self) -> str:
        return f"URLPath({str(self)!r})"


class File(io.IOBase):
    """Deprecated file input/output type (use ``Path``): the run gets a file-like object.

    Only a marker here: a ``File`` input arrives as an open binary file, and a
    ``File`` output may be any object with ``read()``.
    """


class Opaque:
    """Marks a value cogd passes through untouched as JSON: ``Annotated[T, Opaque]``.

    The schema says ``{"type": "object"}`` and no coercion or checking happens.
    Used as the class itself (``Annotated[dict, Opaque]``) or as ``Opaque()``.
    """

    def __repr__(self) -> str:
        return "cog.Opaque"


class BaseModel:
    """Base class of a structured output: subclasses become dataclasses.

    Declare fields with type hints (``Optional`` ones may be left out) and
    return an instance; the output is a JSON object of those fields::

        class Output(BaseModel):
            text: str
            score: float | None = None

    Keyword arguments to the class statement go to ``dataclasses.dataclass``;
    ``auto_dataclass=False`` leaves the class alone.
    """

    def __init_subclass__(cls, *, auto_dataclass: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__()
        if auto_dataclass:
            dataclasses.dataclass(**kwargs)(cls)


_Item = TypeVar("_Item")


class ConcatenateIterator(Iterator[_Item], Generic[_Item]):
    """Return type of a run that yields text chunks meant to be joined for display.

    ``-> ConcatenateIterator[str]`` on a generator: the schema marks the output
    as an iterator whose items concatenate (``x-cog-array-display``).
    """

    def __next__(self) -> _Item:
        raise StopIteration


class AsyncConcatenateIterator(AsyncIterator[_Item], Generic[_Item]):
    """``ConcatenateIterator`` for an ``async def`` generator."""

    async def __anext__(self) -> _Item:
        raise StopAsyncIteration


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
