"""The model's schema: its run method's type hints, as the OpenAPI document Cog clients read.

The worker calls :func:`prepare` once, before the model's ``setup``: it reads the
run method's signature (``typing.get_type_hints``, so ``from __future__ import
annotations`` works), turns every parameter and the return type into a small
type tree (:data:`Node`), and renders the document that the worker sends in
``ready``. The server serves that document as ``/openapi.json`` and compiles its
``Input`` schema into the validator that checks every request, so the tree, the
document and the validation can never disagree. ``cogd.coercion`` walks the same
tree to turn validated JSON into Python values and outputs back into JSON.

A signature the document cannot express (an unsupported type, a ``Union`` with a
``Path``, ``**kwargs``) raises :class:`SchemaError`, whose message names the
parameter and its type; setup fails with it. A pre-built
``.cog/openapi_schema.json`` in the model directory is served as it is.

``python -m cogd.schema FILE.py:NAME`` prints the document (``cogd schema``
runs it), so users can check a model's schema without serving it.
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import enum
import inspect
import json
import os
import pathlib
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cogd.decorators import declared_streaming
from cogd.types import (
    MISSING,
    AsyncConcatenateIterator,
    ConcatenateIterator,
    FieldInfo,
    File,
    Opaque,
    Secret,
)

# Where Cog's build step leaves a pre-built schema, relative to the model directory.
PREBUILT_SCHEMA = os.path.join(".cog", "openapi_schema.json")


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
        module = annotation.__module__
        if module in ("builtins", "cogd.types", "cog"):
            prefix = "cog." if module != "builtins" else ""
            return prefix + annotation.__qualname__
        return f"{module}.{annotation.__qualname__}"
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


def _core(node: Node) -> Node:
    return node.inner if isinstance(node, Nullable) else node


def _leaf(node: Node) -> Node:
    """What constraints apply to: the value, or each item of a list."""
    node = _core(node)
    return _core(node.item) if isinstance(node, ListOf) else node


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
    core = _core(node)
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
    listed = isinstance(_core(node), ListOf) and isinstance(default, (list, tuple))
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


# -- the OpenAPI document --------------------------------------------------------

_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}


def type_schema(node: Node) -> dict[str, Any]:
    """The OpenAPI 3.0 schema of a type tree (no title, no order)."""
    if isinstance(node, Scalar):
        if node.kind in _JSON_TYPES:
            return {"type": _JSON_TYPES[node.kind]}
        if node.kind in ("path", "file"):
            return {"type": "string", "format": "uri"}
        if node.kind == "secret":
            return {
                "type": "string",
                "format": "password",
                "writeOnly": True,
                "x-cog-secret": True,
            }
        if node.kind in ("dict", "opaque"):
            return {"type": "object"}
        return {}
    if isinstance(node, ListOf):
        return {"type": "array", "items": type_schema(node.item)}
    if isinstance(node, Nullable):
        return {**type_schema(node.inner), "nullable": True}
    if isinstance(node, UnionOf):
        return {"anyOf": [type_schema(m) for m in node.members]}
    if isinstance(node, IteratorOf):
        schema = {
            "type": "array",
            "items": type_schema(node.item),
            "x-cog-array-type": "iterator",
        }
        if node.concatenate:
            schema["x-cog-array-display"] = "concatenate"
        return schema
    properties = {}
    required = []
    for name, field_node in node.fields:
        properties[name] = {"title": title(name), **type_schema(field_node)}
        if not isinstance(field_node, Nullable):
            required.append(name)
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def title(name: str) -> str:
    """``num_outputs`` -> ``Num Outputs``, as Cog titles inputs and fields."""
    return name.replace("_", " ").title()


class _NoJsonError(Exception):
    """A default that has no JSON form (it stays a Python-side default)."""


def _default_json(node: Node, value: Any) -> Any:
    """The JSON form of a default, as a client would send it."""
    core = _core(node)
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(core, Scalar):
        if core.kind == "secret":
            raise _NoJsonError  # a secret default must never be published
        if core.kind == "float" and type(value) is int:
            return float(value)
        if core.kind in ("path", "file") and isinstance(value, (str, os.PathLike)):
            return str(value)
    if isinstance(value, (list, tuple)) and isinstance(core, ListOf):
        return [_default_json(core.item, v) for v in value]
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise _NoJsonError from None
    return value


def input_schema(
    specs: tuple[InputSpec, ...], component: str, enum_name: Callable[[str], str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``Input`` component and the enum components its ``choices`` need.

    ``enum_name`` picks a component name for an input's choices (Cog uses the
    input's own name).
    """
    properties: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    required = []
    for spec in specs:
        info = spec.info
        core = _core(spec.node)
        prop: dict[str, Any] = {}
        if info.choices is not None:
            name = enum_name(spec.name)
            enums[name] = {
                "title": name,
                "description": "An enumeration.",
                "enum": [c.value if isinstance(c, enum.Enum) else c for c in info.choices],
                "type": type_schema(core)["type"],
            }
            prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
        else:
            prop["title"] = title(spec.name)
            prop.update(type_schema(core))
        prop["x-order"] = spec.order
        if spec.has_default and info.default is not None:
            try:
                prop["default"] = _default_json(spec.node, info.default)
            except _NoJsonError:
                pass
        if isinstance(spec.node, Nullable):
            prop["nullable"] = True
        if info.description is not None:
            prop["description"] = info.description
        # Constraints go where JSON Schema applies them: on the value, or on
        # each item of a list input.
        target = prop["items"] if isinstance(core, ListOf) else prop
        if info.ge is not None:
            target["minimum"] = info.ge
        if info.le is not None:
            target["maximum"] = info.le
        if info.min_length is not None:
            target["minLength"] = info.min_length
        if info.max_length is not None:
            target["maxLength"] = info.max_length
        if info.regex is not None:
            target["pattern"] = info.regex
        if info.deprecated:
            prop["deprecated"] = True
        if info.accept is not None:
            prop["x-cog-accept"] = info.accept
        properties[spec.name] = prop
        if spec.required:
            required.append(spec.name)
    schema: dict[str, Any] = {"title": component, "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _response(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": "Successful Response",
        "content": {"application/json": {"schema": schema}},
    }


_VALIDATION_ERROR_RESPONSE = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}


def _timestamp(name: str) -> dict[str, Any]:
    return {"title": title(name), "type": "string", "format": "date-time"}


def _envelopes(request: str, response: str, inputs: str, output: str) -> dict[str, Any]:
    """The request and response envelopes of one kind of run (prediction or training)."""
    return {
        request: {
            "title": request,
            "type": "object",
            "properties": {
                "id": {"title": "Id", "type": "string"},
                "input": {"$ref": f"#/components/schemas/{inputs}"},
                "webhook": {
                    "title": "Webhook",
                    "type": "string",
                    "format": "uri",
                    "minLength": 1,
                    "maxLength": 65536,
                },
                "webhook_events_filter": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/WebhookEvent"},
                    "default": ["start", "output", "logs", "completed"],
                },
                "created_at": _timestamp("created_at"),
                "output_file_prefix": {"title": "Output File Prefix", "type": "string"},
                "context": {
                    "title": "Context",
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        response: {
            "title": response,
            "type": "object",
            "properties": {
                "id": {"title": "Id", "type": "string"},
                "input": {"$ref": f"#/components/schemas/{inputs}"},
                "output": {"$ref": f"#/components/schemas/{output}"},
                "status": {"$ref": "#/components/schemas/Status"},
                "error": {"title": "Error", "type": "string"},
                "logs": {"title": "Logs", "type": "string", "default": ""},
                "metrics": {"title": "Metrics", "type": "object"},
                "version": {"title": "Version", "type": "string"},
                "created_at": _timestamp("created_at"),
                "started_at": _timestamp("started_at"),
                "completed_at": _timestamp("completed_at"),
            },
        },
    }


def _run_paths(collection: str, noun: str, request: str, response: str) -> dict[str, Any]:
    """The create, idempotent create and cancel routes of ``/predictions`` or ``/trainings``."""
    id_param = f"{noun}_id"
    path_param = {
        "required": True,
        "schema": {"title": title(id_param), "type": "string"},
        "name": id_param,
        "in": "path",
    }
    prefer = {
        "required": False,
        "schema": {"title": "Prefer", "type": "string"},
        "name": "prefer",
        "in": "header",
    }
    body = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}},
    }
    responses = {
        "200": _response({"$ref": f"#/components/schemas/{response}"}),
        "422": _VALIDATION_ERROR_RESPONSE,
    }
    verb = "predict" if noun == "prediction" else "train"
    return {
        f"/{collection}": {
            "post": {
                "summary": title(verb),
                "description": f"Run a single {noun} on the model",
                "operationId": f"{verb}_{collection}_post",
                "parameters": [prefer],
                "requestBody": body,
                "responses": responses,
            }
        },
        f"/{collection}/{{{id_param}}}": {
            "put": {
                "summary": f"{title(verb)} Idempotent",
                "description": f"Run a single {noun} on the model (idempotent creation).",
                "operationId": f"{verb}_idempotent_{collection}__{id_param}__put",
                "parameters": [path_param, prefer],
                "requestBody": body,
                "responses": responses,
            }
        },
        f"/{collection}/{{{id_param}}}/cancel": {
            "post": {
                "summary": "Cancel",
                "description": f"Cancel a running {noun}",
                "operationId": f"cancel_{collection}__{id_param}__cancel_post",
                "parameters": [path_param],
                "responses": {"200": _response({}), "422": _VALIDATION_ERROR_RESPONSE},
            }
        },
    }


def openapi_document(predict: Signature | None, train: Signature | None = None) -> dict[str, Any]:
    """The whole OpenAPI 3.0 document for a model's run method and/or training function."""
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "Root",
                "operationId": "root__get",
                "responses": {"200": _response({"title": "Response Root  Get"})},
            }
        },
        "/health-check": {
            "get": {
                "summary": "Healthcheck",
                "operationId": "healthcheck_health_check_get",
                "responses": {"200": _response({"title": "Response Healthcheck Health Check Get"})},
            }
        },
    }
    reserved = {
        "Input",
        "Output",
        "PredictionRequest",
        "PredictionResponse",
        "TrainingInput",
        "TrainingOutput",
        "TrainingRequest",
        "TrainingResponse",
        "Status",
        "WebhookEvent",
        "HTTPValidationError",
        "ValidationError",
    }

    def enum_name(prefix: str) -> Callable[[str], str]:
        # Cog names an input's enum after the input; a name that is taken
        # (a fixed component, or the same input name in the other run kind)
        # gets a prefix rather than overwriting it.
        def pick(name: str) -> str:
            candidate = name if name not in reserved else f"{name}Choices"
            if candidate in schemas or candidate in reserved:
                candidate = f"{prefix.lower()}_{candidate}"
            return candidate

        return pick

    for signature, kind in ((predict, "prediction"), (train, "training")):
        if signature is None:
            continue
        if kind == "prediction":
            names = ("Input", "Output", "PredictionRequest", "PredictionResponse")
            collection, prefix = "predictions", "Prediction"
        else:
            names = ("TrainingInput", "TrainingOutput", "TrainingRequest", "TrainingResponse")
            collection, prefix = "trainings", "Training"
        inputs, output, request, response = names
        input_component, enums = input_schema(signature.inputs, inputs, enum_name(prefix))
        schemas[inputs] = input_component
        schemas[output] = {"title": output, **type_schema(signature.output)}
        schemas.update(enums)
        schemas.update(_envelopes(request, response, inputs, output))
        paths.update(_run_paths(collection, kind, request, response))

    schemas["Status"] = {
        "title": "Status",
        "description": "An enumeration.",
        "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
        "type": "string",
    }
    schemas["WebhookEvent"] = {
        "title": "WebhookEvent",
        "description": "An enumeration.",
        "enum": ["start", "output", "logs", "completed"],
        "type": "string",
    }
    schemas["HTTPValidationError"] = {
        "title": "HTTPValidationError",
        "type": "object",
        "properties": {
            "detail": {
                "title": "Detail",
                "type": "array",
                "items": {"$ref": "#/components/schemas/ValidationError"},
            }
        },
    }
    schemas["ValidationError"] = {
        "title": "ValidationError",
        "required": ["loc", "msg", "type"],
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": {"title": "Message", "type": "string"},
            "type": {"title": "Error Type", "type": "string"},
        },
    }
    paths["/shutdown"] = {
        "post": {
            "summary": "Start Shutdown",
            "operationId": "start_shutdown_shutdown_post",
            "responses": {"200": _response({})},
        }
    }
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


# -- loading predictors and training functions ----------------------------------


def run_callable(predictor: Any, mode: str = "predict") -> tuple[Callable, bool]:
    """``(function, skip_self)`` of a predictor class's run method (chosen as
    the worker chooses it, ``cogd.runner.run_method_name``), or of a function.

    The class is not instantiated: its function is read from the class.
    """
    if inspect.isclass(predictor):
        from cogd.runner import LoadError, run_method_name

        try:
            name = run_method_name(predictor, mode)
        except LoadError as e:
            raise SchemaError(str(e)) from None
        static = isinstance(inspect.getattr_static(predictor, name), staticmethod)
        return getattr(predictor, name), not static
    if callable(predictor):
        return predictor, False
    raise SchemaError(f"{predictor!r} is neither a class nor a function")


def _load(ref: str) -> Any:
    """``FILE.py:NAME``, reusing the module when the worker already imported that file."""
    path, _, name = ref.rpartition(":")
    full = os.path.abspath(path)
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == full and hasattr(module, name):
            return getattr(module, name)
    from cogd.runner import load_predictor

    return load_predictor(ref)


def configured_ref(mode: str, model_dir: str = ".") -> str | None:
    """What runs in ``mode``: ``COG_PREDICT_TYPE_STUB``/``COG_TRAIN_TYPE_STUB``,
    else ``run:`` (or the older ``predict:``)/``train:`` in cog.yaml.

    ``run:`` and ``predict:`` both set is refused by the server before the
    worker starts; here ``run:`` wins."""
    variable = "COG_TRAIN_TYPE_STUB" if mode == "train" else "COG_PREDICT_TYPE_STUB"
    ref = os.environ.get(variable, "").strip()
    if ref:
        return ref
    keys = ("train",) if mode == "train" else ("run", "predict")
    try:
        with open(os.path.join(model_dir, "cog.yaml"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    for key in keys:
        value = _cog_yaml_value(text, key)
        if value:
            return value
    return None


def _cog_yaml_value(text: str, key: str) -> str | None:
    """A top-level string of cog.yaml, or ``None`` when unset, empty or unreadable."""
    try:
        import yaml  # type: ignore[import-untyped]

        value = (yaml.safe_load(text) or {}).get(key)
        return value.strip() if isinstance(value, str) and value.strip() else None
    except ImportError:
        # PyYAML is not a dependency: a top-level `run: "FILE.py:NAME"` line
        # is all this needs to read.
        match = re.search(rf"""^{key}:\s*["']?([^"'#\s]+)["']?\s*(?:#.*)?$""", text, re.M)
        return match.group(1) if match else None
    except Exception:  # noqa: BLE001 - a broken cog.yaml is reported by the server itself
        return None


def _other_signature(mode: str, served_ref: str) -> Signature | None:
    """The signature of the other mode's function when it is configured.

    One document describes both, as the one Cog builds into an image does: a
    predictor's document carries the training schemas and a training
    function's the prediction ones. A function that cannot be loaded or
    described costs the document that part, with a warning, never the runs
    being served.
    """
    other = "predict" if mode == "train" else "train"
    ref = configured_ref(other)
    if not ref or ref == served_ref:
        return None
    try:
        fn, skip_self = run_callable(_load(ref), other)
        return signature_of(fn, skip_self=skip_self)
    except Exception as e:  # noqa: BLE001 - any failure only drops that part
        noun = "trainings" if other == "train" else "predictions"
        print(f"cogd: leaving {noun} out of the schema: {ref}: {e}", file=sys.stderr)
        return None


def read_prebuilt() -> str | None:
    """The text of ``.cog/openapi_schema.json`` in the working directory, when present."""
    try:
        with open(PREBUILT_SCHEMA, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        json.loads(text)
    except ValueError as e:
        raise SchemaError(f"{PREBUILT_SCHEMA} is not valid JSON: {e}") from None
    return text


#: The operation extension by which Cog's clients tell that a model streams.
STREAMING_EXTENSION = "x-cog-streaming"


def marks_streaming(document_json: str) -> bool:
    """Whether the document's ``POST /predictions`` says the model streams."""
    try:
        post = json.loads(document_json)["paths"]["/predictions"]["post"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(post, dict) and post.get(STREAMING_EXTENSION) is True


def prepare(
    fn: Callable[..., Any],
    predictor_ref: str,
    mode: str = "predict",
    *,
    skip_self: bool = False,
    streaming: bool = False,
) -> tuple[Signature, str]:
    """The run method's signature and the schema document (JSON text) for ``ready``.

    Called in the worker with the loaded run method before the model's setup.
    A pre-built schema file wins; then a run method cogd cannot describe is
    served with a pass-through signature rather than failing. A ``streaming``
    run is marked ``x-cog-streaming`` on ``POST /predictions``, as Cog does.
    """
    prebuilt = read_prebuilt()
    try:
        signature = signature_of(fn, skip_self=skip_self)
    except SchemaError as e:
        if prebuilt is None:
            raise
        print(f"cogd: serving {PREBUILT_SCHEMA}; inputs pass through unchecked: {e}")
        signature = loose_signature(fn, skip_self=skip_self)
    if prebuilt is not None:
        return signature, prebuilt
    if mode == "train":
        document = openapi_document(_other_signature(mode, predictor_ref), signature)
    else:
        document = openapi_document(signature, _other_signature(mode, predictor_ref))
        if streaming:
            document["paths"]["/predictions"]["post"][STREAMING_EXTENSION] = True
    return signature, json.dumps(document)


# -- `python -m cogd.schema` -----------------------------------------------------


class _StdoutToStderr:
    """Points fd 1 (and ``sys.stdout``) at stderr while model code is imported.

    Whatever an import prints, from Python or C, must not end up in the
    document that this command writes on stdout.
    """

    def __enter__(self) -> _StdoutToStderr:
        sys.stdout.flush()
        self._saved_fd = os.dup(1)
        os.dup2(2, 1)
        self._saved_stdout = sys.stdout
        sys.stdout = sys.stderr
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stdout = self._saved_stdout
        os.dup2(self._saved_fd, 1)
        os.close(self._saved_fd)


def document_for(predictor_ref: str, mode: str = "predict") -> str:
    """The document the server would serve for this model (run in the model directory)."""
    prebuilt = read_prebuilt()
    if prebuilt is not None:
        return prebuilt
    predictor = _load(predictor_ref)
    fn, skip_self = run_callable(predictor, mode)
    streaming = declared_streaming(fn, getattr(fn, "__func__", None), predictor)
    return prepare(fn, predictor_ref, mode, skip_self=skip_self, streaming=streaming)[1]


def main(argv: list[str] | None = None) -> int:
    """``python -m cogd.schema FILE.py:NAME [--mode train]``: print the document."""
    parser = argparse.ArgumentParser(
        prog="cogd schema", description="Print a model's OpenAPI schema without serving it."
    )
    parser.add_argument("predictor_ref", help="FILE.py:NAME of the predictor")
    parser.add_argument("--mode", choices=("predict", "train"), default="predict")
    args = parser.parse_args(argv)
    try:
        with _StdoutToStderr():
            text = document_for(args.predictor_ref, args.mode)
    except Exception as e:  # noqa: BLE001 - any failure is the user's to read
        print(f"cogd schema: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(json.loads(text), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
