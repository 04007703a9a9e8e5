"""Values crossing the worker's edge: JSON inputs in, JSON outputs out.

The server has already validated a request's input against the schema and
filled in defaults, so what arrives here is well-typed JSON. :func:`coerce_inputs`
makes it the Python values the run method declared (``Path`` for files,
``Secret`` wrappers, the most specific member of a union); a JSON int sent to
a ``float`` input stays an int, as Cog's runtime hands it over.
:func:`encode_output` walks the same type tree
(``cogd.signature``) the other way: it turns what the run returned into JSON,
guided by the declared type where the value fits it (a path string of a
``-> Path`` run is sent as a file) and as the value is where it does not, as
Cog does: an output is never failed for not matching its annotation, and
``None`` is always an output. Only a value JSON cannot carry fails the run.

A file input arrives as a local path (the server downloaded it). A file
output is not read here: :func:`file_output` stands a :class:`FileRef` in for
it, and :func:`output_json` lists those with where they sit in the value, so
the server can read each file from disk and send it (inline as a ``data:``
URI, or uploaded) without the bytes ever crossing the worker protocol.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import inspect
import io
import json
import math
import mimetypes
import os
import reprlib
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from cogd.signature import (
    IteratorOf,
    ListOf,
    Node,
    Nullable,
    ObjectOf,
    Scalar,
    Signature,
    UnionOf,
    type_name,
)
from cogd.types import Path, Secret, URLPath

# Calls a coroutine function on the worker's event loop and waits for its result
# (the runner's own ``_call``), to drain an async iterator.
RunAsync = Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any]

_URL_SCHEMES = ("http", "https", "data")


# -- files ----------------------------------------------------------------------


def path_input(value: str) -> Path:
    """A ``Path`` input: a URL stays a :class:`URLPath` whose ``str()`` is the URL."""
    if urllib.parse.urlparse(value).scheme in _URL_SCHEMES:
        return URLPath(value)
    return Path(value)


def file_input(value: str) -> Any:
    """A ``File`` input: a file-like object for a data URI or a local path; a URL
    stays its string until the files step fetches it."""
    scheme = urllib.parse.urlparse(value).scheme
    if scheme == "data":
        with urllib.request.urlopen(value) as response:  # noqa: S310 - data: only
            data = io.BytesIO(response.read())
        data.name = "file" + (mimetypes.guess_extension(response.headers.get_content_type()) or "")
        return data
    if scheme in _URL_SCHEMES:
        return value
    return open(value, "rb")  # noqa: SIM115 - handed to the run, which owns it


@dataclasses.dataclass(frozen=True)
class FileRef:
    """A file the run returned, to be sent by the server: where it is, the name
    it is uploaded under, and its media type."""

    path: str
    filename: str
    mime_type: str


def _mime_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def file_output(value: Any, output_dir: str | None = None) -> FileRef | str:
    """A file output (a path, or an object with ``read()``) as a :class:`FileRef`.

    A path stays where it is (the server resolves symlinks before reading it);
    its name is what it is uploaded under, as Cog does. A file object is
    copied into ``output_dir`` (the prediction's directory, removed after the
    run), named after its ``name`` or ``file``. A ``URLPath`` is still a URL
    and is returned as one. Raises ``ValueError`` for a path that is not a file.
    """
    if isinstance(value, URLPath):
        return str(value)
    if isinstance(value, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(value))
        if not os.path.isfile(path):
            raise ValueError(f"{path} is not a file")
        filename = os.path.basename(path)
        return FileRef(path, filename, _mime_type(filename))
    filename = os.path.basename(str(getattr(value, "name", "") or "")) or "file"
    if callable(getattr(value, "seek", None)):
        try:
            value.seek(0)
        except (OSError, ValueError):
            pass  # not seekable: send what is left, as it reads
    if output_dir:
        # The server makes a run's directory only when it needs one itself.
        os.makedirs(output_dir, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="file-", suffix=f"-{filename}", dir=output_dir)
    with os.fdopen(fd, "wb") as out:
        while chunk := value.read(1024 * 1024):
            out.write(chunk.encode() if isinstance(chunk, str) else chunk)
    return FileRef(path, filename, _mime_type(filename))


def _pointer_token(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def extract_files(
    data: Any, pointer: str = "", long_strings: list[str] | None = None
) -> tuple[Any, list[dict[str, str]]]:
    """``data`` with each :class:`FileRef` replaced by ``None``, and the list of
    those files with their RFC 6901 pointers, as the worker protocol sends them.

    With ``long_strings``, each string value of at least :data:`LONG_STRING`
    characters is also replaced, by :data:`_LONG_STRING_MARKER`, and appended
    to it in the order the walk meets them, which is the order ``json.dumps``
    writes them in."""
    files: list[dict[str, str]] = []
    return _extract(data, pointer, files, long_strings), files


def _extract(
    value: Any, at: str, files: list[dict[str, str]], long_strings: list[str] | None
) -> Any:
    """The walk of :func:`extract_files`. A module-level function, not a closure
    that calls itself: such a closure is a reference cycle (the function, its
    cell, the function), which would keep ``files`` and ``long_strings`` (the
    run's long output strings, tens of megabytes) alive until the cyclic
    collector runs, every 70-odd runs."""
    if isinstance(value, str):
        if long_strings is None or len(value) < LONG_STRING:
            return value
        long_strings.append(value)
        return _LONG_STRING_MARKER
    if isinstance(value, FileRef):
        files.append(
            {
                "pointer": at,
                "path": value.path,
                "filename": value.filename,
                "mime_type": value.mime_type,
            }
        )
        return None
    if isinstance(value, list):
        return [_extract(v, f"{at}/{i}", files, long_strings) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            k: _extract(v, f"{at}/{_pointer_token(k)}", files, long_strings)
            for k, v in value.items()
        }
    return value


# -- inputs ---------------------------------------------------------------------


class InputCoercionError(ValueError):
    """An input the run cannot be called with (only reachable when the server
    validated against a pre-built schema that differs from the code)."""


def coerce_inputs(signature: Signature, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments for the run method, from validated JSON ``inputs``.

    An input that is absent gets the Python default (a copy, so a run that
    mutates it cannot change the next run's), or ``None`` when it is optional.
    """
    kwargs: dict[str, Any] = {}
    for spec in signature.inputs:
        if spec.name in inputs:
            value = inputs[spec.name]
        elif spec.has_default:
            value = _fresh(spec.info.default)
        elif isinstance(spec.node, Nullable):
            value = None
        else:
            raise InputCoercionError(f"input {spec.name!r} is required")
        try:
            kwargs[spec.name] = coerce(spec.node, value)
        except (TypeError, ValueError, OSError) as e:
            raise InputCoercionError(f"input {spec.name!r}: {e}") from None
    unknown = set(inputs).difference(kwargs)
    if unknown:
        print(f"cogd: ignoring inputs the run does not take: {', '.join(sorted(unknown))}")
    return kwargs


def _fresh(default: Any) -> Any:
    """A copy of a mutable default (a list, a dict); the default itself when it
    cannot be copied."""
    if isinstance(default, (list, dict, set)):
        try:
            return copy.deepcopy(default)
        except Exception:  # noqa: BLE001 - an uncopyable default is used as it is
            return default
    return default


def coerce(node: Node, value: Any) -> Any:
    """One JSON value as the declared type. Values already of that type pass."""
    if isinstance(node, Nullable):
        return None if value is None else coerce(node.inner, value)
    if isinstance(node, Scalar):
        return _coerce_scalar(node.kind, value)
    if isinstance(node, ListOf):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return [coerce(node.item, v) for v in value]
    if isinstance(node, UnionOf):
        for member in _members_for(node, value):
            try:
                return coerce(member, value)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"expected {type_name(node)}, got {type(value).__name__}")
    return value


def _coerce_scalar(kind: str, value: Any) -> Any:
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)  # JSON Schema counts 3.0 as an integer
        return value
    if kind == "path":
        return value if isinstance(value, os.PathLike) else path_input(value)
    if kind == "file":
        return value if not isinstance(value, str) else file_input(value)
    if kind == "secret":
        return value if isinstance(value, Secret) else Secret(value)
    return value


# Union members by specificity: the first whose JSON shape matches exactly wins,
# so True is a bool (not the int 1) and 2 is an int (not the float 2.0).
_SPECIFICITY = {"bool": 0, "int": 1, "float": 2, "str": 3, "dict": 5, "opaque": 5, "any": 6}


def _exact(node: Node, value: Any) -> bool:
    if isinstance(node, Scalar):
        kind = node.kind
        if kind == "bool":
            return type(value) is bool
        if kind == "int":
            return type(value) is int
        if kind == "float":
            return type(value) is float
        if kind == "str":
            return isinstance(value, str)
        if kind in ("dict", "opaque"):
            return isinstance(value, dict)
        return kind == "any"
    if isinstance(node, ListOf):
        return isinstance(value, list) and all(_accepts(node.item, v) for v in value)
    if isinstance(node, Nullable):
        return value is None or _exact(node.inner, value)
    return False


def _accepts(node: Node, value: Any) -> bool:
    """Whether ``value`` can become ``node``, allowing the int -> float widening."""
    if _exact(node, value):
        return True
    if isinstance(node, Scalar) and node.kind == "float":
        return type(value) is int
    if isinstance(node, Nullable):
        return value is None or _accepts(node.inner, value)
    if isinstance(node, UnionOf):
        return any(_accepts(m, value) for m in node.members)
    return False


def _rank(node: Node) -> int:
    if isinstance(node, Scalar):
        return _SPECIFICITY.get(node.kind, 7)
    return 4  # lists between str and dict


def _members_for(node: UnionOf, value: Any) -> list[Node]:
    exact = [m for m in node.members if _exact(m, value)]
    widened = [m for m in node.members if m not in exact and _accepts(m, value)]
    return sorted(exact, key=_rank) + sorted(widened, key=_rank)


# -- outputs --------------------------------------------------------------------


class OutputTypeError(TypeError):
    """What the run returned cannot be sent as its output."""


#: Strings at least this long are left out of the JSON text written here:
#: the worker's Rust side escapes them as it sends the output, straight from
#: the ``str`` (``json`` takes ~50 ms to escape a 20 MiB string; Rust, a few).
LONG_STRING = 64 * 1024

#: What stands in for a long string in the JSON text: a NUL (which JSON text
#: always escapes) and a random token, so no string of an output can be it.
_LONG_STRING_MARKER = f"\x00cogd-long-string-{os.urandom(12).hex()}"
_LONG_STRING_MARKER_JSON = json.dumps(_LONG_STRING_MARKER, ensure_ascii=False)


@dataclasses.dataclass(frozen=True, slots=True)
class EncodedOutput:
    """An output (or one streamed chunk) as the worker sends it to the server.

    The JSON text comes in pieces: ``pieces[0]``, then ``strings[0]`` (a
    string of at least :data:`LONG_STRING` characters from the value, still
    to be encoded as a JSON string), then ``pieces[1]``, and so on; a value
    without long strings is one piece. ``null`` stands where each file goes,
    and ``files`` (JSON text) lists those files (see :func:`extract_files`).
    ``cogd._native`` reads it by these attribute names.
    """

    pieces: list[str]
    files: str
    strings: list[str]

    def text(self) -> str:
        """The whole JSON text, the long strings encoded in place (for tests
        and tools; the server does this itself, without the copy)."""
        out = [self.pieces[0]]
        for string, piece in zip(self.strings, self.pieces[1:], strict=True):
            out.append(json.dumps(string, ensure_ascii=False))
            out.append(piece)
        return "".join(out)


def output_json(
    node: Node,
    value: Any,
    run_async: RunAsync | None = None,
    output_dir: str | None = None,
) -> EncodedOutput:
    """The run's return value as JSON (see :func:`encode_output`), with
    ``null`` where files go, and the list of those files: an
    :class:`EncodedOutput`.
    """
    data = encode_output(node, value, run_async, output_dir)
    if (
        data is None
        or isinstance(data, (int, float))
        or (isinstance(data, str) and len(data) < LONG_STRING)
    ):
        # A short scalar (the common case) holds no file and no long string.
        return EncodedOutput([_JSON.encode(data)], "[]", [])
    strings: list[str] = []
    data, files = extract_files(data, "", strings)
    text = _JSON.encode(data)
    if not strings:
        return EncodedOutput([text], json.dumps(files), strings)
    pieces = text.split(_LONG_STRING_MARKER_JSON)
    if len(pieces) != len(strings) + 1:
        raise RuntimeError(f"{len(strings)} long strings left {len(pieces)} pieces of JSON")
    return EncodedOutput(pieces, json.dumps(files), strings)


#: Output JSON as Cog writes it: compact UTF-8 (``{"count":42}``, ``héllo``),
#: strict (no NaN or infinity); made once rather than per output. A lone
#: surrogate, which UTF-8 cannot carry, becomes U+FFFD on the Rust side.
_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def encode_output(
    node: Node,
    value: Any,
    run_async: RunAsync | None = None,
    output_dir: str | None = None,
) -> Any:
    """The run's return value as JSON-ready data, guided by ``node``; files
    are :class:`FileRef` values (see :func:`extract_files`).

    Iterators and generators are drained into a list; async ones through
    ``run_async`` on the worker's event loop. File objects are copied into
    ``output_dir``. Raises :class:`OutputTypeError`, saying what was returned
    where, for what JSON cannot carry (``bytes``, ``nan``, an arbitrary object)
    and for a structured output missing one of its fields.
    """
    return _Encoder(run_async, output_dir).encode(node, value, "output")


def _describe(value: Any) -> str:
    """``str 'abc'``: a returned value for an error message, kept short."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _numeric(value: Any) -> Any:
    """numpy-style scalars (``np.float32(1.5)``) as the Python value ``item()`` gives."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (int, float, bool, str)):
        try:
            return item()
        except (TypeError, ValueError):
            return value
    return value


class _Encoder:
    """One output's walk down its type tree; ``where`` names the spot for errors
    (``output.items[2]``)."""

    def __init__(self, run_async: RunAsync | None, output_dir: str | None = None) -> None:
        self.run_async = run_async
        self.output_dir = output_dir

    def file(self, value: Any, where: str) -> FileRef | str:
        try:
            return file_output(value, self.output_dir)
        except ValueError as e:
            raise OutputTypeError(f"{where} should be a file, but {e}") from None

    def drain(self, value: Any) -> list[Any] | None:
        """The items of a list, tuple, iterator or generator (sync or async)."""
        if isinstance(value, (list, tuple)):
            return list(value)
        if inspect.isasyncgen(value) or hasattr(value, "__anext__"):
            if self.run_async is None:
                return None
            items: list[Any] = self.run_async(functools.partial(_collect, value))
            return items
        if isinstance(value, (str, bytes, dict, Mapping)):
            return None
        if hasattr(value, "__next__") or inspect.isgenerator(value):
            return list(value)
        if isinstance(value, (set, frozenset)):
            return list(value)
        return None

    def encode(self, node: Node, value: Any, where: str) -> Any:
        """``value`` as JSON, guided by ``node`` where it fits; where it does
        not, the value goes as it is (:meth:`anything`), as Cog sends it."""
        if value is None:
            return None
        if isinstance(node, Nullable):
            return self.encode(node.inner, value, where)
        if isinstance(node, Scalar):
            return self.scalar(node, value, where)
        if isinstance(node, (ListOf, IteratorOf)):
            items = self.drain(value)
            if items is None:
                return self.anything(value, where)
            return [self.encode(node.item, v, f"{where}[{i}]") for i, v in enumerate(items)]
        if isinstance(node, UnionOf):
            for member in node.members:
                if _accepts(member, value):
                    return self.encode(member, value, where)
            return self.anything(value, where)
        return self.structured(node, value, where)

    def scalar(self, node: Scalar, value: Any, where: str) -> Any:
        kind = node.kind
        if kind in ("int", "float", "bool"):
            value = _numeric(value)
            if isinstance(value, enum.Enum):
                value = value.value
            if kind == "float" and type(value) is int:
                return float(value)  # what the annotation says; Cog 0.13 did the same
        elif kind == "str" and isinstance(value, enum.Enum):
            value = value.value
        elif kind in ("path", "file") and isinstance(value, (str, os.PathLike)):
            if isinstance(value, str) and not os.path.isfile(value):
                return value  # not a local file (a URL, say): sent as the string it is
            return self.file(value, where)
        return self.anything(value, where)

    def structured(self, node: ObjectOf, value: Any, where: str) -> Any:
        fields = dict(node.fields)
        if isinstance(value, Mapping):
            return {
                str(k): self.encode(fields[k], v, f"{where}.{k}")
                if k in fields
                else self.anything(v, f"{where}.{k}")
                for k, v in value.items()
            }
        if not isinstance(value, node.cls) and not all(hasattr(value, k) for k in fields):
            return self.anything(value, where)
        result = {}
        for name, field_node in node.fields:
            field_where = f"{where}.{name}"
            try:
                field_value = getattr(value, name)
            except AttributeError:
                raise OutputTypeError(
                    f"{field_where} is required by {node.cls.__name__}, "
                    f"but the run's {type(value).__name__} has no {name!r}"
                ) from None
            result[name] = self.encode(field_node, field_value, field_where)
        return result

    def anything(self, value: Any, where: str) -> Any:
        """Any value as JSON, for outputs declared ``Any``, ``dict`` or not at all."""
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise OutputTypeError(f"{where} is {value!r}, which JSON cannot represent")
            return value
        if isinstance(value, enum.Enum):
            return self.anything(value.value, where)
        if isinstance(value, Secret):
            return value.get_secret_value()
        if isinstance(value, os.PathLike) or callable(getattr(value, "read", None)):
            return self.file(value, where)
        if isinstance(value, Mapping):
            return {str(k): self.anything(v, f"{where}.{k}") for k, v in value.items()}
        dump = getattr(value, "model_dump", None) or getattr(value, "dict", None)
        if callable(dump) and not isinstance(value, type):
            return self.anything(dump(), where)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: self.anything(getattr(value, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(value)
            }
        for method in ("item", "tolist"):  # numpy scalars and arrays
            convert = getattr(value, method, None)
            if callable(convert):
                try:
                    return self.anything(convert(), where)
                except (TypeError, ValueError):
                    pass
        items = self.drain(value)
        if items is not None:
            return [self.anything(v, f"{where}[{i}]") for i, v in enumerate(items)]
        raise OutputTypeError(
            f"{where} cannot be sent as JSON: the run returned {_describe(value)}"
        )


async def _collect(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


__all__ = [
    "EncodedOutput",
    "FileRef",
    "InputCoercionError",
    "OutputTypeError",
    "coerce",
    "coerce_inputs",
    "encode_output",
    "extract_files",
    "file_input",
    "file_output",
    "output_json",
    "path_input",
]
