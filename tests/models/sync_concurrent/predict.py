"""Synchronous predictors that ask for more than one slot, which cannot work.

- Predictor: cog.yaml asks for 2 concurrent predictions
- Decorated: @concurrent(max=3) on its (sync) predict
"""

from cog import BasePredictor, concurrent


class Predictor(BasePredictor):
    def predict(self, name: str = "x") -> str:
        return f"sync:{name}"


class Decorated(BasePredictor):
    @concurrent(max=3)
    def predict(self, name: str = "x") -> str:
        return f"sync:{name}"
