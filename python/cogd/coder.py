"""``Coder``: Cog's registry of custom encoders and decoders for types it does not know.

A model registers a ``Coder`` subclass whose ``factory(tpe)`` returns an
instance for the types it handles, and whose ``encode``/``decode`` turn a value
into a JSON object and back. ``Coder.lookup(tpe)`` finds one.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any


class Coder:
    """Base class of a custom type's encoder/decoder; see the module docstring."""

    _coders: set[type[Coder]] = set()

    @staticmethod
    def register(coder: type[Coder]) -> None:
        """Make ``coder`` available to :meth:`lookup`."""
        Coder._coders.add(coder)

    @staticmethod
    def lookup(tpe: Any) -> Coder | None:
        """A coder for ``tpe`` from the registered ones, or ``None``."""
        for cls in Coder._coders:
            coder = cls.factory(tpe)
            if coder is not None:
                return coder
        return None

    @staticmethod
    @abstractmethod
    def factory(tpe: type[Any]) -> Coder | None:
        """An instance for ``tpe`` when this coder handles it, else ``None``."""

    @abstractmethod
    def encode(self, x: Any) -> dict[str, Any]:
        """``x`` as a JSON object."""

    @abstractmethod
    def decode(self, x: dict[str, Any]) -> Any:
        """The value a JSON object encodes."""
