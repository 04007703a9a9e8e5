"""``cog.errors``: Cog's error classes."""

from cogd.compat import CogError, ConfigDoesNotExist, PredictorNotSet

__all__ = ["CogError", "ConfigDoesNotExist", "PredictorNotSet"]
