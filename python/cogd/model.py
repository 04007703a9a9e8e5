"""``BaseModel``: the base class of a structured output, as Cog 0.23 defines it.

A subclass becomes a dataclass when it is defined. Cog's rules hold: the
first base must be a ``BaseModel``; no other base may be a dataclass;
``auto_dataclass=False`` leaves a class to its author, and once a class in
the chain has made that choice, its subclasses cannot go back to automatic
(their fields would be half inherited); other keywords of the class statement
(``init``, ``frozen``, ``kw_only``...) go to ``dataclasses.dataclass``.

Before Cog 0.14 ``cog.BaseModel`` was pydantic's, and models written then
still declare outputs the pydantic way. Where a dataclass would refuse such a
declaration that pydantic took, the class is made to work as pydantic made it:
a mutable default (``tags: list[str] = []``) is copied for each instance,
``pydantic.Field(...)`` defaults are read as the default or factory they name,
an ``Optional`` field without a default that no required field follows
defaults to ``None`` (as in pydantic 1), and fields with defaults followed by
required ones make the constructor keyword-only (pydantic's always is). A
class a dataclass accepts as it is stays exactly that dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any


class BaseModel:
    """Base class of a structured output: subclasses become dataclasses.

    Declare fields with type hints and return an instance; the output is a
    JSON object of those fields::

        class Output(BaseModel):
            text: str
            score: float | None = None

    Keyword arguments to the class statement go to ``dataclasses.dataclass``;
    ``auto_dataclass=False`` leaves the class alone.
    """

    def __init_subclass__(
        cls, *, auto_dataclass: bool = True, init: bool = True, **kwargs: Any
    ) -> None:
        super().__init_subclass__()
        _check_bases(cls, auto_dataclass)
        if not auto_dataclass:
            # Not annotated on BaseModel, where it would read as a field.
            cls._cog_auto_dataclass = False  # type: ignore[attr-defined]
            return
        _adopt_pydantic_declarations(cls)
        # A failed attempt has already replaced the class's defaults by what
        # the dataclass keeps of them; the retry must see them as declared.
        declared = {name: cls.__dict__[name] for name in _own_fields(cls) if name in cls.__dict__}
        try:
            dataclasses.dataclass(init=init, **kwargs)(cls)
        except TypeError as e:
            if "kw_only" in kwargs or "follows default argument" not in str(e):
                raise
            for name, value in declared.items():
                setattr(cls, name, value)
            dataclasses.dataclass(init=init, kw_only=True, **kwargs)(cls)
        cls._cog_auto_dataclass = True  # type: ignore[attr-defined]


def _check_bases(cls: type, auto_dataclass: bool) -> None:
    """Cog's rules on a subclass's bases (see the module's docstring)."""
    primary = cls.__bases__[0]
    if not issubclass(primary, BaseModel):
        raise TypeError(f'Primary base class of "{cls.__name__}" must inherit from BaseModel')
    if not auto_dataclass and primary is not BaseModel:
        tracked = getattr(primary, "_cog_auto_dataclass", None)
        if tracked is None:
            raise RuntimeError(
                f'Primary base class of "{cls.__name__}" is a child of a child of `BaseModel`, '
                "but `auto_dataclass` tracking does not exist. "
                "This is likely a bug or other programming error."
            )
        if tracked:
            raise ValueError(
                f'Primary base class of "{cls.__name__}" ("{primary.__name__}") has '
                f'auto_dataclass=True, but "{cls.__name__}" has auto_dataclass=False. '
                "This creates broken field inheritance."
            )
    for base in cls.__bases__[1:]:
        if dataclasses.is_dataclass(base):
            raise TypeError(
                f'Cannot mixin dataclass "{base.__name__}" while inheriting from `BaseModel`'
            )


def _adopt_pydantic_declarations(cls: type) -> None:
    """Rewrites the class's own field defaults that pydantic took and a
    dataclass refuses (see the module's docstring), before it is made one."""
    names = _own_fields(cls)
    for name in names:
        if name in cls.__dict__:
            value = _pydantic_default(cls.__dict__[name])
            if value is not _UNCHANGED:
                if value is _REQUIRED:
                    delattr(cls, name)
                else:
                    setattr(cls, name, value)
    hints = _own_hints(cls)
    for i, name in enumerate(names):
        if name in cls.__dict__ or not _is_optional(hints.get(name)):
            continue
        later = names[i + 1 :]
        if all(n in cls.__dict__ or _is_optional(hints.get(n)) for n in later):
            setattr(cls, name, None)


class _Marker:
    pass


_UNCHANGED: Any = _Marker()
_REQUIRED: Any = _Marker()


def _pydantic_default(value: Any) -> Any:
    """What a dataclass should see for a class attribute pydantic read as a
    default: a ``field`` with a factory, the plain default, :data:`_REQUIRED`,
    or :data:`_UNCHANGED` for a value a dataclass takes as it is."""
    if isinstance(value, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value))
    if not _is_pydantic_field(value):
        return _UNCHANGED
    factory = getattr(value, "default_factory", None)
    if callable(factory):
        return dataclasses.field(default_factory=factory)
    default = getattr(value, "default", None)
    if default is Ellipsis or type(default).__name__ == "PydanticUndefinedType":
        return _REQUIRED
    return _pydantic_default(default) if isinstance(default, (list, dict, set)) else default


def _is_pydantic_field(value: Any) -> bool:
    cls = type(value)
    return cls.__name__ == "FieldInfo" and cls.__module__.startswith("pydantic")


def _own_fields(cls: type) -> list[str]:
    """The names the class itself annotates, in order."""
    return list(cls.__dict__.get("__annotations__", {}))


def _own_hints(cls: type) -> dict[str, Any]:
    """The class's own annotations, resolved where they can be (string ones
    under ``from __future__ import annotations`` may name anything)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable hints just get no None default
        return {}


def _is_optional(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return type(None) in typing.get_args(hint)
    return hint is Any
