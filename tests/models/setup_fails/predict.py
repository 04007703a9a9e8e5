"""A model whose setup prints a few lines and then raises."""

import os
import sys

from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        print("setup: first line")
        print("setup: a line on stderr", file=sys.stderr)
        os.write(1, b"setup: an os.write to fd 1\n")
        print("setup: last line, right before raising")
        raise RuntimeError("setup exploded")

    def predict(self) -> str:
        return "unreachable"
