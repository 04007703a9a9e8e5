"""Benchmark model: a streaming generator.

Yields `count` small strings, pausing `pause_ms` milliseconds after each (0:
as fast as it can). With `stamp`, each is `str(time.time_ns())` taken just
before the yield, so a client on the same machine can tell how long the chunk
took to reach it.
"""

import time
from collections.abc import Iterator

from cog import BasePredictor, streaming


class Predictor(BasePredictor):
    @streaming
    def predict(
        self, count: int = 1000, pause_ms: float = 0.0, stamp: bool = False
    ) -> Iterator[str]:
        pause = pause_ms / 1000
        for _ in range(count):
            yield str(time.time_ns()) if stamp else "token"
            if pause:
                time.sleep(pause)
