"""The predictor of the trainer model: what a training server must not run."""

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def predict(self, prompt: str = Input(description="What to say")) -> str:
        return f"predicted: {prompt}"
