"""The SDK types model code is written against: runners, ``Input``, ``Path``, ``Secret``,
``File``, ``URLFile``, ``URLPath``, ``Opaque``, the concatenating iterators, and the
names Cog 0.13's ``cog.types`` had (``Weights``, ``get_filename``, the cog.yaml types).

``cog`` re-exports these names, so ``from cog import BasePredictor, Input`` in an
unchanged Cog model resolves here (``BaseModel`` lives in ``cogd.model``). They are
plain markers and containers: what each means for the schema lives in
``cogd.signature``, how values become them (and back) in ``cogd.coercion``.
"""

from __future__ import annotations

import inspect
import io
import mimetypes
import os
import pathlib
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar, Union

from cogd.scope import ScopeAttribute, current_scope


class CancelationException(BaseException):  # noqa: N818 - the name is Cog's public API
    """Raised inside a running prediction when it is canceled.

    A ``BaseException`` so that ``except Exception`` in model code does not
    swallow it by accident.
    """


def user_method_owner(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO that defines method ``name`` for the model,
    or ``None``; the SDK's own bases (and what follows them) do not count, so
    a mixin listed after ``BaseRunner`` is not taken for the model's code."""
    for owner in inspect.getmro(cls):
        if owner in (BaseRunner, BasePredictor, object):
            break
        if callable(owner.__dict__.get(name)):
            return owner
    return None


class BaseRunner:
    """Base class of a model: optional ``setup()``, then ``run(**inputs)`` per prediction.

    ``run`` and the older ``predict`` bridge to each other: a model that
    defines only ``predict`` can be called through ``run`` and the other way
    round. ``self.scope`` is the current run's scope and
    ``self.record_metric`` records one of its metrics. An optional
    ``healthcheck()`` (sync or async, returning a bool) is called on each
    ``/health-check``; false, an exception or a timeout reports the model
    ``UNHEALTHY``.
    """

    #: The current run's scope (``cogd.scope.current_scope()``): its
    #: ``context`` and ``metrics``; an inert scope outside a run.
    scope = ScopeAttribute()

    def setup(self, weights: Path | str | None = None) -> None:
        """Load weights and prepare; runs once before the first prediction.

        A ``weights`` parameter receives ``COG_WEIGHTS`` (a URL), else
        ``./weights`` when it exists, else ``None``."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run one prediction; inputs arrive as keyword arguments."""
        cls = type(self)
        if user_method_owner(cls, "run") is None and user_method_owner(cls, "predict"):
            return self.predict(*args, **kwargs)
        raise NotImplementedError("run has not been implemented by parent class.")

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """Deprecated spelling of ``run``: calls the model's ``run``."""
        warnings.warn(
            f"{type(self).__name__}.predict() is deprecated; use run() instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.run(*args, **kwargs)

    def record_metric(self, key: str, value: Any, mode: str = "replace") -> None:
        """Record a custom metric of the current prediction (``"replace"``,
        ``"incr"``/``"increment"`` or ``"append"``; ``None`` deletes); does nothing outside a
        run. See ``cogd.scope.Scope.record_metric``."""
        current_scope().record_metric(key, value, mode)


class BasePredictor(BaseRunner):
    """Deprecated name of ``BaseRunner`` (whose ``predict`` is the run)."""


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
    default_factory: Callable[..., Any] | None = None,
    **extra: Any,
) -> Any:
    """Declare an input's default and constraints, used as a parameter default.

    ``accept`` (Path/File inputs) lists the media types or extensions a client
    should send, as in HTML's ``accept`` attribute; it is published in the
    schema as ``x-cog-accept`` and not enforced. ``default_factory`` is
    refused, as Cog refuses it: a default must be a literal the schema can show.
    ``Input(...)`` (Ellipsis, pydantic's "required", as Cog 0.13 took it) is
    the same as no default.
    """
    if default is Ellipsis:
        default = MISSING
    if default_factory is not None:
        raise TypeError(
            "default_factory is not supported in Input(). "
            "Use a literal default value instead: Input(default=...). "
            "Mutable defaults like lists should use immutable alternatives "
            "(e.g. a comma-separated string) or be constructed in predict()."
        )
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


#: Characters a file name taken from a URL may not keep, and its longest length
#: in bytes (room is left for the prefixes temp files add), as Cog has them.
FILENAME_ILLEGAL_CHARS = set("\u0000/")
FILENAME_MAX_LENGTH = 200


def _truncate_filename_bytes(filename: str, length: int) -> str:
    """``filename`` cut to ``length`` UTF-8 bytes, keeping its extension (``name~.ext``)."""
    if len(filename.encode()) <= length:
        return filename
    root, ext = os.path.splitext(filename)
    kept = root.encode()[: max(length - len(ext.encode()) - 1, 0)]
    return kept.decode("utf-8", "ignore") + "~" + ext


def get_filename(url: str) -> str:
    """The file name a URL's content is saved under: its last path segment
    (``file.EXT`` for a data URI, by its media type), unquoted, cut to
    :data:`FILENAME_MAX_LENGTH` bytes, without :data:`FILENAME_ILLEGAL_CHARS`."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "data":
        media_type = parsed.path.split(",", 1)[0].split(";", 1)[0] or "text/plain"
        return "file" + (mimetypes.guess_extension(media_type) or "")
    name = urllib.parse.unquote_plus(os.path.basename(parsed.path))
    name = _truncate_filename_bytes(name, FILENAME_MAX_LENGTH)
    for c in FILENAME_ILLEGAL_CHARS:
        name = name.replace(c, "_")
    return name


def get_filename_from_urlopen(resp: Any) -> str:
    """``file.EXT`` for a ``urllib`` response, by its media type (Cog 0.13's helper)."""
    extension = mimetypes.guess_extension(resp.headers.get_content_type())
    return "file" + (extension or "")


def _fetch(url: str) -> Any:
    """An open ``urllib`` response for an http(s) URL, with ``COG_USER_AGENT``."""
    headers = {}
    user_agent = os.environ.get("COG_USER_AGENT")
    if user_agent:
        headers["User-Agent"] = user_agent
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only
    return urllib.request.urlopen(request, timeout=10)  # noqa: S310


class Path(pathlib.PosixPath):
    """A local file path; file inputs arrive as ``Path`` and file outputs are returned as one."""

    @classmethod
    def validate(cls, value: Any) -> pathlib.Path:
        """``value`` as a path: a path stays itself, a URL becomes a :class:`URLPath`."""
        if isinstance(value, pathlib.Path):
            return value
        if urllib.parse.urlparse(value).scheme in ("data", "http", "https"):
            return URLPath(value)
        return cls(value)


class URLPath(Path):
    """A ``Path`` input that is still a URL (``http(s)://`` or ``data:``).

    It passes ``isinstance(x, pathlib.Path)`` checks, and ``str()`` gives back
    the URL it came from, so nothing about the value is lost before the file
    step fetches it; as a path it is just the URL's file name. ``convert()``
    fetches it into a temp file and returns that file's ``Path``. Made as
    ``URLPath(url)`` or, as Cog makes it, ``URLPath(source=, filename=, fileobj=)``.
    """

    source: str

    def __new__(cls, source: str, filename: str | None = None, fileobj: Any = None) -> URLPath:
        return super().__new__(cls, filename or get_filename(source) or "file")

    def __init__(self, source: str, filename: str | None = None, fileobj: Any = None) -> None:
        filename = _truncate_filename_bytes(filename or get_filename(source) or "file", 200)
        if sys.version_info >= (3, 12):  # pathlib keeps its segments in __init__ there
            super().__init__(filename)
        self.source = source
        self.filename = filename
        self.fileobj = fileobj
        self._path: Path | None = None

    def convert(self) -> Path:
        """The content at the URL, saved once into a temp file."""
        if self._path is None:
            source = self.fileobj if self.fileobj is not None else File.validate(self.source)
            with tempfile.NamedTemporaryFile(suffix=self.filename, delete=False) as dest:
                shutil.copyfileobj(source, dest)
            self._path = Path(dest.name)
        return self._path

    def unlink(self, missing_ok: bool = False) -> None:
        """Remove the temp file ``convert()`` made, if any."""
        if self._path is not None:
            self._path.unlink(missing_ok=missing_ok)

    def __str__(self) -> str:
        # Paths that pathlib derives from this one (parent, with_suffix...) are
        # built without __init__ and are plain names.
        return getattr(self, "source", None) or super().__str__()

    def __repr__(self) -> str:
        return f"URLPath({str(self)!r})"


class File(io.IOBase):
    """Deprecated file input/output type (use ``Path``): the run gets a file-like object.

    A ``File`` input arrives as an open binary file, and a ``File`` output may
    be any object with ``read()``.
    """

    @classmethod
    def validate(cls, value: Any) -> io.IOBase:
        """``value`` as a file: a file stays itself, a data URI is decoded,
        an http(s) URL becomes a :class:`URLFile`."""
        if isinstance(value, io.IOBase):
            return value
        scheme = urllib.parse.urlparse(value).scheme
        if scheme == "data":
            with urllib.request.urlopen(value) as response:  # noqa: S310 - data: only
                return io.BytesIO(response.read())
        if scheme in ("http", "https"):
            return URLFile(value)
        raise ValueError(
            f"'{scheme}' is not a valid URL scheme. 'data', 'http', or 'https' is supported."
        )


class URLFile(io.IOBase):
    """A file-like object for an http(s) URL, opened on first use.

    Nothing is fetched until an attribute of the response is needed
    (``read``, iteration...); then it acts as the response does. It pickles as
    its URL and name, so it can cross process boundaries unopened.
    """

    __slots__ = ("__target__", "__url__", "name")

    def __init__(self, url: str, filename: str | None = None) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError("URLFile requires URL to conform to HTTP or HTTPS protocol")
        object.__setattr__(self, "name", filename or os.path.basename(parsed.path))
        object.__setattr__(self, "__url__", url)

    def __getstate__(self) -> dict[str, Any]:
        return {"name": object.__getattribute__(self, "name"), "url": self._url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "name", state["name"])
        object.__setattr__(self, "__url__", state["url"])

    @property
    def _url(self) -> str:
        url: str = object.__getattribute__(self, "__url__")
        return url

    @property
    def __wrapped__(self) -> Any:
        """The response, opened the first time it is asked for."""
        try:
            return object.__getattribute__(self, "__target__")
        except AttributeError:
            pass
        response = _fetch(self._url)
        object.__setattr__(self, "__target__", response)
        return response

    def __getattr__(self, name: str) -> Any:
        if name in ("__target__", "__url__", "__wrapped__"):
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            setattr(self.__wrapped__, name, value)

    def __delattr__(self, name: str) -> None:
        if hasattr(type(self), name):
            object.__delattr__(self, name)
        else:
            delattr(self.__wrapped__, name)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.__wrapped__)

    # io.IOBase defines these itself; the response's own must answer instead.
    def read(self, size: int = -1) -> bytes:
        """Read from the response (opening it)."""
        data: bytes = self.__wrapped__.read(size)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        """A line of the response (opening it)."""
        line: bytes = self.__wrapped__.readline(-1 if size is None else size)
        return line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Close the response if it was opened."""
        try:
            object.__getattribute__(self, "__target__").close()
        except AttributeError:
            pass

    @property
    def closed(self) -> bool:
        try:
            return bool(object.__getattribute__(self, "__target__").closed)
        except AttributeError:
            return False

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        try:
            target = object.__getattribute__(self, "__target__")
        except AttributeError:
            return f"<{type(self).__name__} at 0x{id(self):x} for {self._url!r}>"
        return f"<{type(self).__name__} at 0x{id(self):x} wrapping {target!r}>"


class Opaque:
    """Marks a value cogd passes through untouched as JSON: ``Annotated[T, Opaque]``.

    The schema says ``{"type": "object"}`` and no coercion or checking happens.
    Used as the class itself (``Annotated[dict, Opaque]``) or as ``Opaque()``.
    """

    def __repr__(self) -> str:
        return "cog.Opaque"


Item = TypeVar("Item")


class ConcatenateIterator(Iterator[Item], Generic[Item]):
    """Return type of a run that yields text chunks meant to be joined for display.

    ``-> ConcatenateIterator[str]`` on a generator: the schema marks the output
    as an iterator whose items concatenate (``x-cog-array-display``).
    """

    def __next__(self) -> Item:
        raise StopIteration


class AsyncConcatenateIterator(AsyncIterator[Item], Generic[Item]):
    """``ConcatenateIterator`` for an ``async def`` generator."""

    async def __anext__(self) -> Item:
        raise StopAsyncIteration


@dataclass(frozen=True)
class Secret:
    """A sensitive string input, redacted wherever it is printed."""

    secret_value: str | None = None

    def get_secret_value(self) -> str | None:
        """The real value; use it only where it is needed."""
        return self.secret_value

    def __str__(self) -> str:
        return "**********" if self.secret_value is not None else ""

    def __repr__(self) -> str:
        return f"Secret({self})"


#: What a ``setup(weights=...)`` parameter may be annotated as (Cog 0.13's name).
Weights = Union[File, Path, str]  # noqa: UP007 - a value, kept as Cog spelled it


class CogConcurrencyConfig(TypedDict, total=False):
    """``concurrency:`` of cog.yaml (Cog 0.13's type)."""

    max: int


class CogBuildConfig(TypedDict, total=False):
    """``build:`` of cog.yaml (Cog 0.13's type)."""

    cuda: str | None
    gpu: bool | None
    python_packages: list[str] | None
    system_packages: list[str] | None
    python_requirements: str | None
    python_version: str | None
    run: list[str] | list[dict[str, Any]] | None


class CogConfig(TypedDict, total=False):
    """cog.yaml as a dict (Cog 0.13's type)."""

    build: CogBuildConfig
    concurrency: CogConcurrencyConfig
    image: str
    predict: str
    run: str
    train: str
