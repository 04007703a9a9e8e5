"""A model whose .cog/openapi_schema.json differs from its code on purpose.

The code accepts any `level`; the pre-built schema allows only 1 to 5 and
titles it "Level From The File". The server must serve and enforce the file.
"""

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, level: int = 1) -> str:
        return f"level {level}"
