"""A predictor written against Cog 0.8-0.13's SDK (pydantic-era outputs)."""

from typing import List, Optional  # noqa: UP035 - spelled as the models of the time did

from cog import BaseModel, BasePredictor, File, Input, Path
from cog.types import Weights


class Output(BaseModel):
    text: str
    tags: List[str] = []  # noqa: UP006
    seed: Optional[int]


class Predictor(BasePredictor):
    def setup(self, weights: Optional[Weights] = None) -> None:
        self.weights = weights

    def predict(
        self,
        text: str = Input(description="Text to echo", default="hi"),
        count: int = Input(description="How many tags", default=1, ge=0, le=3),
        image: Path = Input(description="Not used", default=None),
        document: File = Input(description="Not used", default=None),
    ) -> Output:
        out = Output(text=text)
        out.tags.extend(f"tag{i}" for i in range(count))
        return out

    def run(self, command: str) -> str:
        """An older model's own helper named run: predict() stays the entry point."""
        return command
