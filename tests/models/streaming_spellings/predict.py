"""Streaming runs under every spelling of the decorator, one class each; a
test picks the class with COG_PREDICT_TYPE_STUB=predict.py:<Class>.

- Bare: `from cog import streaming`, `@streaming` on
  `def predict(...) -> Iterator[str]`;
- Called: `@streaming()` on `def run(...) -> ConcatenateIterator[str]` (BaseRunner);
- CogBare: `import cog`, `@cog.streaming` on
  `async def predict(...) -> AsyncIterator[str]`;
- CogCalled: `@cog.streaming()` on
  `async def run(...) -> AsyncConcatenateIterator[str]` (BaseRunner);
- NotMarked: no decorator, `def predict(...) -> Iterator[str]`.

Every run yields `n` tokens "tok-<i>", sleeping (or awaiting) `interval`
seconds after each.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import cog
from cog import (
    AsyncConcatenateIterator,
    BasePredictor,
    BaseRunner,
    ConcatenateIterator,
    streaming,
)


class Bare(BasePredictor):
    @streaming
    def predict(self, n: int = 3, interval: float = 0.0) -> Iterator[str]:
        for i in range(n):
            yield f"tok-{i}"
            time.sleep(interval)


class Called(BaseRunner):
    @streaming()
    def run(self, n: int = 3, interval: float = 0.0) -> ConcatenateIterator[str]:
        for i in range(n):
            yield f"tok-{i}"
            time.sleep(interval)


class CogBare(BasePredictor):
    @cog.streaming
    async def predict(self, n: int = 3, interval: float = 0.0) -> AsyncIterator[str]:
        for i in range(n):
            yield f"tok-{i}"
            await asyncio.sleep(interval)


class CogCalled(BaseRunner):
    @cog.streaming()
    async def run(self, n: int = 3, interval: float = 0.0) -> AsyncConcatenateIterator[str]:
        for i in range(n):
            yield f"tok-{i}"
            await asyncio.sleep(interval)


class NotMarked(BasePredictor):
    def predict(self, n: int = 3, interval: float = 0.0) -> Iterator[str]:
        for i in range(n):
            yield f"tok-{i}"
            time.sleep(interval)
