"""Benchmark model: a call costs 5 ms plus 0.2 ms per item (here one), by
sleep, as a GPU model's fixed and per-item costs might; not batched."""

import time

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, text: str = "x") -> str:
        time.sleep(0.005 + 0.0002)
        return text
