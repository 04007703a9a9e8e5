"""A predictor whose setup is a coroutine; the (sync) run uses what it built."""

import asyncio

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    async def setup(self) -> None:
        await asyncio.sleep(0.05)
        self.greeting = "hi from async setup"
        print("async setup: done")

    def predict(self, name: str = Input(default="you")) -> str:
        return f"{self.greeting}, {name}"
