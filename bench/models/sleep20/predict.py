"""Sleeps `seconds` (20 ms by default) and returns when the run began (epoch seconds)."""

import time

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, seconds: float = 0.02) -> float:
        began = time.time()
        time.sleep(seconds)
        return began
