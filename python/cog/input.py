"""``cog.input``: ``Input()`` and the ``FieldInfo`` it returns."""

from cogd.types import FieldInfo, Input

__all__ = ["FieldInfo", "Input"]
