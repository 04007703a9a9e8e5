"""Cog's exception module, kept for ``from cog.exceptions import CancelationException``."""

from cogd.types import CancelationException

__all__ = ["CancelationException"]
