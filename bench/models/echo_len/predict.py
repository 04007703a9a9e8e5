"""Benchmark model: a large input (`text`), of which only the length comes back."""

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, text: str) -> int:
        return len(text)
