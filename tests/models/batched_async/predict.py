"""An async batched model with two slots (`@cog.concurrent(max=2)` and
`@cog.batch(max_size=2, max_wait_ms=100)`): two batches may run at once.

Each call sleeps `seconds` (the first member's) with `await asyncio.sleep`,
and returns "<text>:<batch size>" for each member.
"""

import asyncio

import cog
from cog import BasePredictor


class Predictor(BasePredictor):
    @cog.concurrent(max=2)
    @cog.batch(max_size=2, max_wait_ms=100)
    async def predict(self, text: str, seconds: float = 0.0) -> str:
        print(f"batch:{len(text)}:{','.join(text)}")
        await asyncio.sleep(seconds[0])
        return [f"{t}:{len(text)}" for t in text]
