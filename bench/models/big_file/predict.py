"""Benchmark model: a large file output (`mib` MiB, written fresh by each run)."""

import os
import tempfile

from cog import BasePredictor, Path


class Predictor(BasePredictor):
    def setup(self) -> None:
        self.block = os.urandom(1 << 20)

    def predict(self, mib: int = 20) -> Path:
        fd, name = tempfile.mkstemp(suffix=".bin")
        with os.fdopen(fd, "wb") as f:
            for _ in range(mib):
                f.write(self.block)
        return Path(name)
