"""Benchmark model: a large string output (`mib` MiB of text)."""

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, mib: int = 20) -> str:
        return "x" * (mib << 20)
