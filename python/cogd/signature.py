"""A run method's signature: its type hints read into a small type tree.

:func:`signature_of` reads the parameters and return type of a run method
(``typing.get_type_hints``, so ``from __future__ import annotations`` works)
and turns each into a :data:`Node`: a :class:`Scalar` leaf, or a list,
optional, union, structured object or iterator of nodes. What ``Input()``
declared travels with each parameter as an :class:`InputSpec`; a constraint
that cannot apply to its type is dropped with a warning in the setup logs,
as Cog served it.

The tree is all the rest of the worker reads: ``cogd.schema`` renders it as
the OpenAPI document (and so the server's validator), ``cogd.coercion`` walks
it to turn validated JSON into Python values and outputs back into JSON, so
they can never disagree. A signature the document cannot express (an
unsupported type, a ``Union`` with a ``Path``, ``**kwargs``) raises
:class:`SchemaError`, whose message names the parameter and its type.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import pathlib
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cogd.types import (
    MISSING,
    AsyncConcatenateIterator,
    ConcatenateIterator,
    FieldInfo,
    File,
    Opaque,
    Secret,
)


class SchemaError(Exception):
    """A signature the schema cannot express; the message names the parameter and type."""


# -- the type tree ---------------------------------------------------------------


@dataclass(frozen=True)
class Scalar:
    """A leaf type. ``kind`` is one of :data:`SCALAR_KINDS`."""

    kind: str


@dataclass(frozen=True)
class ListOf:
    """``list[item]`` (also used for ``Iterator`` outputs once materialized)."""

    item: Node


@dataclass(frozen=True)
class Nullable:
    """``Optional[inner]``: the value may be ``None``/``null``."""

    inner: Node


@dataclass(frozen=True)
class UnionOf:
    """``Union`` of two or more JSON-native members, in declaration order."""

    members: tuple[Node, ...]


@dataclass(frozen=True)
class ObjectOf:
    """A structured output: ``BaseModel``, pydantic model or dataclass."""

    cls: type
    fields: tuple[tuple[str, Node], ...]


@dataclass(frozen=True)
class IteratorOf:
    """``Iterator[item]``/``AsyncIterator[item]`` output; ``concatenate`` for the
    ``ConcatenateIterator`` kinds, whose chunks are joined for display."""

    item: Node
    concatenate: bool


Node = typing.Union[Scalar, ListOf, Nullable, UnionOf, ObjectOf, IteratorOf]  # noqa: UP007

# str int float bool: JSON natives; path/file: URLs in, data URIs (for now) out;
# secret: a masked string; dict: any JSON object; opaque: `Annotated[T, Opaque]`,
# a JSON object passed through as it is; any: no check at all.
SCALAR_KINDS = ("str", "int", "float", "bool", "path", "file", "secret", "dict", "opaque", "any")

# Python names for messages, so an error reads like the code the user wrote.
_SCALAR_NAMES = {
    "str": "str",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "path": "cog.Path",
    "file": "cog.File",
    "secret": "cog.Secret",
    "dict": "dict",
    "opaque": "cog.Opaque",
    "any": "Any",
}


def type_name(node: Node) -> str:
    """The node as a Python type expression, for messages: ``list[int] | None``."""
    if isinstance(node, Scalar):
        return _SCALAR_NAMES[node.kind]
    if isinstance(node, ListOf):
        return f"list[{type_name(node.item)}]"
    if isinstance(node, Nullable):
        return f"{type_name(node.inner)} | None"
    if isinstance(node, UnionOf):
        return " | ".join(type_name(m) for m in node.members)
    if isinstance(node, ObjectOf):
        return node.cls.__name__
    kind = "ConcatenateIterator" if node.concatenate else "Iterator"
    return f"{kind}[{type_name(node.item)}]"


def annotation_name(annotation: Any) -> str:
    """A type hint as the user would write it: ``numpy.ndarray``, ``Union[str, Path]``."""
    if _is_class(annotation):
        module, name = annotation.__module__, annotation.__qualname__
        if module in ("builtins", "cogd.types", "cog"):
            prefix = "cog." if module != "builtins" else ""
            return f"{prefix}{name}"
        return f"{module}.{name}"
    return repr(annotation).replace("typing.", "").replace("cogd.types.", "cog.")


class _UnsupportedError(Exception):
    """Raised inside the parsers; the caller adds which parameter it was about."""


_BY_CLASS: dict[Any, str] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    File: "file",
    Secret: "secret",
    dict: "dict",
    Any: "any",
}


def _is_class(annotation: Any) -> bool:
    """A plain class (on 3.10, ``list[int]`` also passes ``isinstance(x, type)``)."""
    return isinstance(annotation, type) and typing.get_origin(annotation) is None


def _is_union(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin is typing.Union or origin is types.UnionType


def _opaque_inner(annotation: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``Annotated[T, Opaque]``; other ``Annotated`` metadata is dropped."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return annotation, False
    inner, *metadata = typing.get_args(annotation)
    opaque = any(m is Opaque or isinstance(m, Opaque) for m in metadata)
    return inner, opaque


def _scalar_of(annotation: Any) -> Scalar | None:
    """The leaf kind of a class annotation, or ``None`` when it is not a leaf."""
    try:
        kind = _BY_CLASS.get(annotation)
    except TypeError:  # unhashable annotations are never leaves
        return None
    if kind is not None:
        return Scalar(kind)
    if _is_class(annotation):
        if issubclass(annotation, pathlib.PurePath):
            return Scalar("path")
        if issubclass(annotation, Secret):
            return Scalar("secret")
        if issubclass(annotation, File):
            return Scalar("file")
        if typing.is_typeddict(annotation):
            return Scalar("dict")
    origin = typing.get_origin(annotation)
    if origin in (dict, collections.abc.Mapping):
        return Scalar("dict")
    return None


def _contains(node: Node, kinds: set[str]) -> bool:
    if isinstance(node, Scalar):
        return node.kind in kinds
    if isinstance(node, (ListOf, IteratorOf)):
        return _contains(node.item, kinds)
    if isinstance(node, Nullable):
        return _contains(node.inner, kinds)
    if isinstance(node, UnionOf):
        return any(_contains(m, kinds) for m in node.members)
    return any(_contains(f, kinds) for _, f in node.fields)


def _parse(annotation: Any, *, output: bool) -> Node:
    """The tree for one type hint; ``output`` allows the output-only shapes."""
    annotation, opaque = _opaque_inner(annotation)
    if opaque:
        origin = typing.get_origin(annotation)
        if annotation is list or origin is list:
            return ListOf(Scalar("opaque"))
        return Scalar("opaque")
    if isinstance(annotation, typing.TypeVar):
        return Scalar("any")

    leaf = _scalar_of(annotation)
    if leaf is not None:
        return leaf

    if _is_union(annotation):
        members = typing.get_args(annotation)
        present = [m for m in members if m is not type(None) and m is not None]
        nodes = [_parse(m, output=output) for m in present]
        node: Node = nodes[0] if len(nodes) == 1 else UnionOf(tuple(nodes))
        if isinstance(node, UnionOf):
            # A union is told apart by the JSON value alone, so a member that is
            # "a string with a meaning" (a URL, a secret) cannot be in one.
            for member, parsed in zip(present, nodes, strict=True):
                if _contains(parsed, {"path", "file", "secret"}) or isinstance(
                    parsed, (ObjectOf, IteratorOf)
                ):
                    raise _UnsupportedError(
                        f"a Union may only combine str, int, float, bool, list and dict, "
                        f"not {annotation_name(member)}"
                    )
        if len(present) < len(members):
            node = Nullable(node)
        return node

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is list or origin in (list, collections.abc.Sequence):
        item = _parse(args[0], output=output) if args else Scalar("any")
        return ListOf(item)

    if output:
        iterator = _iterator_of(annotation, origin, args)
        if iterator is not None:
            return iterator
        if _is_class(annotation) and _is_structured(annotation):
            return _object_of(annotation)

    raise _UnsupportedError(_OUTPUT_TYPES if output else _INPUT_TYPES)


_INPUT_TYPES = (
    "an input may be str, int, float, bool, cog.Path, cog.File, cog.Secret, dict or Any, "
    "or a list, Optional or Union of those"
)
_OUTPUT_TYPES = (
    "an output may be str, int, float, bool, cog.Path, cog.File, dict, Any, a cog.BaseModel, "
    "pydantic model or dataclass, or a list, Iterator or ConcatenateIterator of those"
)


_ITERATORS = {
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
}


def _iterator_of(annotation: Any, origin: Any, args: tuple[Any, ...]) -> IteratorOf | None:
    concatenating = (ConcatenateIterator, AsyncConcatenateIterator)
    if annotation in concatenating or origin in concatenating:
        item = _parse(args[0], output=True) if args else Scalar("str")
        if item != Scalar("str"):
            raise _UnsupportedError(
                f"{annotation_name(annotation)} must yield str, to be concatenated for display"
            )
        return IteratorOf(item, concatenate=True)
    if annotation in _ITERATORS or origin in _ITERATORS:
        item = _parse(args[0], output=True) if args else Scalar("any")
        return IteratorOf(item, concatenate=False)
    return None


def _is_structured(cls: type) -> bool:
    """A ``cog.BaseModel``, a pydantic model (v1 or v2) or a dataclass."""
    return (
        dataclasses.is_dataclass(cls) or hasattr(cls, "model_fields") or hasattr(cls, "__fields__")
    )


# Structured classes being parsed, so one that contains itself is reported
# instead of recursing forever (the schema is built once, on one thread).
_IN_PROGRESS: set[type] = set()


def _object_of(cls: type) -> ObjectOf:
    if cls in _IN_PROGRESS:
        raise _UnsupportedError(f"{cls.__name__} contains itself, which the schema cannot express")
    _IN_PROGRESS.add(cls)
    try:
        return _object_fields(cls)
    finally:
        _IN_PROGRESS.discard(cls)


def _object_fields(cls: type) -> ObjectOf:
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception as e:  # noqa: BLE001 - any failure to resolve is reported the same way
        raise _UnsupportedError(f"cannot resolve the type hints of {cls.__name__}: {e}") from None
    declared = getattr(cls, "model_fields", None) or getattr(cls, "__fields__", None)
    if declared is not None:
        names = list(declared)
    elif dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls)]
    else:
        names = list(hints)
    fields = []
    for name in names:
        if name not in hints:
            raise _UnsupportedError(f"field {cls.__name__}.{name} has no type annotation")
        try:
            fields.append((name, _parse(hints[name], output=True)))
        except _UnsupportedError as e:
            raise _UnsupportedError(f"field {cls.__name__}.{name}: {e}") from None
    return ObjectOf(cls, tuple(fields))


# -- signatures ------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One parameter of the run method: its type tree and what ``Input()`` declared."""

    name: str
    order: int
    node: Node
    info: FieldInfo

    @property
    def has_default(self) -> bool:
        """True when the parameter has a default (``None`` included)."""
        return self.info.default is not MISSING

    @property
    def required(self) -> bool:
        """True when a request must give this input."""
        return not self.has_default and not isinstance(self.node, Nullable)


@dataclass(frozen=True)
class Signature:
    """What a run method takes and returns."""

    inputs: tuple[InputSpec, ...]
    output: Node


def _resolve_hints(fn: Callable[..., Any], names: list[str]) -> dict[str, Any]:
    """Type hints of ``fn``; when one cannot be resolved, the error names its parameter."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - narrowed down below, parameter by parameter
        pass
    raw = getattr(inspect.unwrap(fn), "__annotations__", {})
    module_globals = getattr(inspect.unwrap(fn), "__globals__", {})
    hints = {}
    for name, annotation in raw.items():
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, module_globals)  # noqa: S307 - the model's own hint
            except Exception as e:  # noqa: BLE001 - reported with the parameter's name
                what = "the return type" if name == "return" else f"input {name!r}"
                raise SchemaError(
                    f"cannot resolve the type hint of {what} ({raw[name]!r}): {e}"
                ) from None
        hints[name] = annotation
    return {k: v for k, v in hints.items() if k in names or k == "return"}


def signature_of(fn: Callable[..., Any], *, skip_self: bool = False) -> Signature:
    """The :class:`Signature` of a run method, function or bound method.

    ``skip_self`` drops the first parameter of a function taken from a class.
    Raises :class:`SchemaError` naming the parameter that cannot be expressed.
    """
    params = list(inspect.signature(fn).parameters.values())
    if skip_self:
        params = params[1:]
    hints = _resolve_hints(fn, [p.name for p in params])
    inputs = []
    for order, param in enumerate(params):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            star = "*" if param.kind is param.VAR_POSITIONAL else "**"
            raise SchemaError(
                f"input {star}{param.name}: the schema cannot express variable arguments; "
                "declare each input as its own parameter"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise SchemaError(f"input {param.name!r} is positional-only; inputs are passed by name")
        if param.name not in hints:
            raise SchemaError(f"input {param.name!r} has no type annotation")
        annotation = hints[param.name]
        try:
            node = _parse(annotation, output=False)
        except _UnsupportedError as e:
            raise SchemaError(
                f"input {param.name!r} has type {annotation_name(annotation)}, "
                f"which cogd cannot express: {e}"
            ) from None
        info = param.default if isinstance(param.default, FieldInfo) else FieldInfo()
        if not isinstance(param.default, FieldInfo) and param.default is not param.empty:
            info = dataclasses.replace(info, default=param.default)
        if info.default is None and not isinstance(node, Nullable):
            # `x: int = None` means "may be left out" in Cog, as in pydantic.
            node = Nullable(node)
        info = _checked_info(param.name, node, info)
        inputs.append(InputSpec(param.name, order, node, info))

    returns = hints.get("return", inspect.Signature.empty)
    if returns in (inspect.Signature.empty, None, type(None)):
        # No declared output (or `-> None`): nothing to describe or check.
        output: Node = Scalar("any")
    else:
        try:
            output = _parse(returns, output=True)
        except _UnsupportedError as e:
            raise SchemaError(
                f"the return type {annotation_name(returns)} cannot be expressed: {e}"
            ) from None
    return Signature(tuple(inputs), output)


def loose_signature(fn: Callable[..., Any], *, skip_self: bool = False) -> Signature:
    """A signature that accepts anything, with the declared defaults.

    Used when a pre-built schema file is served for a run method cogd cannot
    describe itself: values pass through as JSON, defaults still apply.
    """
    params = list(inspect.signature(fn).parameters.values())
    if skip_self:
        params = params[1:]
    inputs = []
    for order, param in enumerate(params):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        info = param.default if isinstance(param.default, FieldInfo) else FieldInfo()
        if not isinstance(param.default, FieldInfo) and param.default is not param.empty:
            info = dataclasses.replace(info, default=param.default)
        inputs.append(InputSpec(param.name, order, Scalar("any"), info))
    return Signature(tuple(inputs), Scalar("any"))


def unwrap_nullable(node: Node) -> Node:
    """``T`` for ``Optional[T]``; any other node as it is."""
    return node.inner if isinstance(node, Nullable) else node


def _leaf(node: Node) -> Node:
    """What constraints apply to: the value, or each item of a list."""
    node = unwrap_nullable(node)
    return unwrap_nullable(node.item) if isinstance(node, ListOf) else node


def _warn(name: str, problem: str) -> None:
    """One line in the setup logs about an input's declaration that Cog took
    and cogd serves without the part that cannot apply."""
    print(f"cogd: warning: input {name!r}: {problem}", file=sys.stderr)


def _checked_info(name: str, node: Node, info: FieldInfo) -> FieldInfo:
    """``info`` without the constraints that cannot apply to the input.

    Cog's runtime never checked a declaration against its type, so a model
    it served may carry constraints that make no sense (``ge`` on a string,
    ``choices=[]`` computed at import time): each is dropped with a warning
    in the setup logs, never a failed setup.
    """
    leaf = _leaf(node)
    kind = leaf.kind if isinstance(leaf, Scalar) else None
    shown = type_name(node)
    dropped: dict[str, Any] = {}
    if (info.ge is not None or info.le is not None) and kind not in ("int", "float"):
        _warn(name, f"ge/le apply to int and float inputs, not {shown}; ignoring them")
        dropped.update(ge=None, le=None)
    text_rules = (info.min_length, info.max_length, info.regex)
    if any(r is not None for r in text_rules) and kind not in ("str", "secret"):
        _warn(name, f"min_length/max_length/regex apply to str inputs, not {shown}; ignoring them")
        dropped.update(min_length=None, max_length=None, regex=None)
    elif info.regex is not None:
        try:
            re.compile(info.regex)
        except re.error as e:
            _warn(name, f"regex {info.regex!r} is invalid ({e}); ignoring it")
            dropped.update(regex=None)
    if info.choices is not None:
        problem = _choices_problem(node, info)
        if problem:
            _warn(name, f"{problem}; ignoring the choices")
            dropped.update(choices=None)
    info = dataclasses.replace(info, **dropped) if dropped else info
    _check_default(name, node, info)
    return info


def _choices_problem(node: Node, info: FieldInfo) -> str | None:
    """Why ``info.choices`` cannot be served for ``node``, or ``None``."""
    core = unwrap_nullable(node)
    expected = {"str": str, "int": int, "float": float}
    if not (isinstance(core, Scalar) and core.kind in expected):
        return f"choices apply to str, int and float inputs, not {type_name(node)}"
    if not info.choices:
        return "choices is empty"
    values = [c.value if isinstance(c, enum.Enum) else c for c in info.choices]
    for value in values:
        if type(value) is not expected[core.kind] and not (
            core.kind == "float" and type(value) is int
        ):
            return f"choice {value!r} is not a {core.kind} like the input"
    return None


def _check_default(name: str, node: Node, info: FieldInfo) -> None:
    """Warns when a default breaks the input's own constraints: the server
    applies it unchecked, as Cog does."""
    default = info.default
    if default is MISSING or default is None:
        return
    listed = isinstance(unwrap_nullable(node), ListOf) and isinstance(default, (list, tuple))
    for value in default if listed else [default]:
        problem = None
        if isinstance(value, enum.Enum):
            value = value.value
        if info.choices is not None:
            choices = [c.value if isinstance(c, enum.Enum) else c for c in info.choices]
            if value not in choices:
                problem = "not one of its choices"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if info.ge is not None and value < info.ge:
                problem = f"less than ge={info.ge}"
            elif info.le is not None and value > info.le:
                problem = f"greater than le={info.le}"
        if isinstance(value, str):
            if info.min_length is not None and len(value) < info.min_length:
                problem = f"shorter than min_length={info.min_length}"
            elif info.max_length is not None and len(value) > info.max_length:
                problem = f"longer than max_length={info.max_length}"
            elif info.regex is not None and re.search(info.regex, value) is None:
                problem = f"not a match for regex {info.regex!r}"
        if problem:
            _warn(name, f"the default {value!r} is {problem}; it is applied all the same")
