"""The training function of the all_types model: only its schema matters."""

from cog import BaseModel, Input, Path


class TrainingOutput(BaseModel):
    weights: Path


def train(
    dataset: Path = Input(description="Training data"),
    epochs: int = Input(default=3, ge=1),
    scheduler: str = Input(default="cosine", choices=["cosine", "linear"]),
) -> TrainingOutput:
    return TrainingOutput(weights=dataset)
