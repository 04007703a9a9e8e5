"""The Cog SDK as model code imports it, served by cogd.

Every name is cogd's (``cogd.__all__``), so that unchanged Cog models run; the
deprecated ``ExperimentalFeatureWarning`` and ``emit_metric`` still work and
say once on stderr that they are deprecated, as Cog's do.
"""

from typing import Any

import cogd as _cogd
from cogd import *  # noqa: F403 - the SDK is cogd's, name for name
from cogd import __version__  # noqa: F401 - the one version string

__all__ = [*_cogd.__all__, *_cogd.compat.DEPRECATED_NAMES]


def __getattr__(name: str) -> Any:
    return _cogd.compat.deprecated(__name__, name)
