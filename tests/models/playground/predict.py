"""A model with an input of every kind the playground has a control for
(tests/test_playground.py); `painter.py` is its image-making sibling.

The run returns what it received, so a test can tell that each control sent
its value with the right JSON type: a file input's text, a secret's value.
It records the prompt's length as a custom metric.
"""

from typing import Optional

from cog import BasePredictor, Input, Path, Secret


class Predictor(BasePredictor):
    def predict(
        self,
        prompt: str = Input(description="What to write about"),
        negative: str = Input(default="", max_length=40, description="What to avoid"),
        steps: int = Input(default=10, ge=1, le=100, description="How many steps"),
        guidance: float = Input(default=7.5, ge=0, le=20),
        enhance: bool = False,
        scheduler: str = Input(default="ddim", choices=["ddim", "euler", "heun"]),
        size: int = Input(default=512, choices=[256, 512, 1024]),
        api_key: Optional[Secret] = Input(default=None, description="A key"),
        document: Optional[Path] = Input(default=None, description="A text file"),
        tags: list[str] = Input(default=["a"]),
        weights: list[float] = Input(default=[0.5], ge=0, le=1),
        options: dict = Input(default={}, description="Free-form options"),
        old: str = Input(default="x", deprecated=True),
    ) -> dict:
        print(f"prompt: {prompt}")
        self.record_metric("prompt_chars", len(prompt))
        return {
            "prompt": prompt,
            "negative": negative,
            "steps": steps,
            "guidance": guidance,
            "enhance": enhance,
            "scheduler": scheduler,
            "size": size,
            "api_key": api_key.get_secret_value() if api_key else None,
            "document": document.read_text() if document else None,
            "tags": tags,
            "weights": weights,
            "options": options,
            "old": old,
        }
