"""Echoes its text input back, so large inputs and outputs can be checked whole."""

import hashlib

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, text: str = "") -> dict:
        return {"length": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}
