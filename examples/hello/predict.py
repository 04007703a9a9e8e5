"""Hello world for cogd: greets whoever is named in the input."""

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def setup(self) -> None:
        # Shows up in /health-check under setup.logs.
        print("hello: setup done")

    def predict(
        self,
        name: str = Input(description="Who to greet", default="world"),
    ) -> str:
        # Shows up in this prediction's "logs".
        print(f"greeting {name}")
        return f"hello, {name}"
