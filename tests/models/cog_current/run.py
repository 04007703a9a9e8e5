"""A runner written against Cog 0.23's SDK, importing what real models import."""

import os
import pickle
import warnings
from typing import Optional, Union

import cog
from cog import BaseRunner, ExperimentalFeatureWarning, Input, URLFile, current_scope
from cog.input import FieldInfo
from cog.types import Path

warnings.filterwarnings("ignore", category=ExperimentalFeatureWarning)

# Computed when the module is imported; empty here, which Cog took all the same.
STYLES = [s for s in os.environ.get("RUNNER_STYLES", "").split(",") if s]

assert isinstance(Input(default=1), FieldInfo)


class Runner(BaseRunner):
    def setup(self) -> None:
        print("runner setup done")

    def run(
        self,
        mode: str = "text",
        ratio: float = 0.5,
        either: Union[str, float] = "x",
        maybe: Optional[int] = None,
        style: str = Input(default="plain", choices=STYLES),
        url: str = "",
    ) -> str:
        cog.emit_metric("calls", 1)
        current_scope().record_metric("ratio_seen", ratio)
        if mode == "none":
            return None
        if mode == "types":
            # Not a str, though the annotation says so: sent as it is, as Cog does.
            return {
                "ratio": [type(ratio).__name__, ratio],
                "either": [type(either).__name__, either],
                "maybe": maybe,
                "style": style,
            }
        if mode == "unicode":
            return {"count": 42, "text": "héllo ✓"}
        if mode == "surrogate":
            return "a\ud800b"
        if mode == "long_surrogate":
            return "x" * 70000 + "\udfff"
        if mode == "urlfile":
            remote = pickle.loads(pickle.dumps(URLFile(url)))
            return remote.read().decode()
        if mode == "path":
            return str(Path("/tmp").is_dir())
        return f"text {style}"
