"""``cog.model``: ``BaseModel``, the base class of structured outputs."""

from cogd.model import BaseModel

__all__ = ["BaseModel"]
