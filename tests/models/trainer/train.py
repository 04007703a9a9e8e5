"""Training for the trainer model, in both forms Cog's training interface has:
a plain function (`train`, what cog.yaml names) and a class with `setup` and
`train` (`Trainer`, chosen with COG_TRAIN_TYPE_STUB=train.py:Trainer).

A training writes `text` repeated `steps` times to a weights file and returns
it with the step count. With `hold`, it prints "holding" and waits until it is
cancelled (or gives up after a minute), for the cancel tests.
"""

import tempfile
import time

from cog import BaseModel, Input, Path

HOLD_TIMEOUT_S = 60.0


class TrainingOutput(BaseModel):
    weights: Path
    steps: int


def train(
    text: str = Input(description="What to learn"),
    steps: int = Input(description="Training steps", default=2, ge=1, le=10),
    hold: bool = Input(description="Wait until cancelled", default=False),
) -> TrainingOutput:
    print(f"training on {text!r} for {steps} steps")
    if hold:
        print("holding", flush=True)
        deadline = time.monotonic() + HOLD_TIMEOUT_S
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise TimeoutError("held training was never cancelled")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text * steps)
    return TrainingOutput(weights=Path(f.name), steps=steps)


class Trainer:
    def setup(self) -> None:
        print("trainer: base model loaded")
        self.prefix = "tuned"

    def train(self, text: str = Input(description="What to learn")) -> str:
        return f"{self.prefix}:{text}"
