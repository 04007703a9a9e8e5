"""Async predictors that differ only in the concurrency they declare.

cog.yaml asks for 3 concurrent predictions; the tests pick a class with
COG_PREDICT_TYPE_STUB:

- Undeclared:     no decorator, so cog.yaml's 3 applies
- MethodDecorated: @concurrent(max=2) on predict, which wins over cog.yaml
- ClassDecorated:  @concurrent(max=4) on the class, which wins over cog.yaml

Every run waits for the file named by `gate`.
"""

import asyncio
import os
import time

from cog import BasePredictor, concurrent

GATE_TIMEOUT_S = 60.0


async def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while path and not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        await asyncio.sleep(0.01)


class Undeclared(BasePredictor):
    async def predict(self, gate: str = "") -> str:
        await wait_for_file(gate)
        return "undeclared"


class MethodDecorated(BasePredictor):
    @concurrent(max=2)
    async def predict(self, gate: str = "") -> str:
        await wait_for_file(gate)
        return "method"


@concurrent(max=4)
class ClassDecorated(BasePredictor):
    async def predict(self, gate: str = "") -> str:
        await wait_for_file(gate)
        return "class"
