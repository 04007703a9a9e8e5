"""``cog.suppress_output``: a block whose output is discarded."""

from cogd.compat import suppress_output

__all__ = ["suppress_output"]
