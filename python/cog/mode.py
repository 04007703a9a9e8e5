"""``cog.mode``: predict or train."""

from cogd.compat import Mode

__all__ = ["Mode"]
