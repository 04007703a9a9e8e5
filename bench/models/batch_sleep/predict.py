"""Benchmark model: a call costs 5 ms plus 0.2 ms per item, by sleep, as a
GPU model's fixed and per-item costs might; batched, up to 32 per call."""

import time

import cog
from cog import BasePredictor


class Predictor(BasePredictor):
    @cog.batch(max_size=32, max_wait_ms=2)
    def predict(self, text: str = "x") -> list[str]:
        time.sleep(0.005 + 0.0002 * len(text))
        return text
