"""``cog.coder``: the registry of custom type encoders/decoders."""

from cogd.coder import Coder

__all__ = ["Coder"]
