"""Benchmark model: an async run that yields to the event loop once."""

import asyncio

from cog import BasePredictor


class Predictor(BasePredictor):
    async def predict(self, name: str = "world") -> str:
        await asyncio.sleep(0)
        return f"hello, {name}"
