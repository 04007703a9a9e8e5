"""An async predictor for the concurrency and async-cancel tests.

It declares no concurrency, so it gets one slot unless the test sets
COG_MAX_CONCURRENCY. Every run:

- touches `started` (when given), so a test knows the run is under way;
- waits for the `gate` file (when given), polling with `await asyncio.sleep`;
- prints `lines` lines "<token>:<where>-<i>", spread over `seconds`, awaiting
  between them, so concurrent runs' lines interleave; `where` is "run", or
  "task" when `spawn` is set and the lines come from a task the run creates
  with asyncio.create_task and awaits;
- returns "done:<token>".

If its task is cancelled, it writes "CancelledError" to `marker` (when given)
and re-raises.
"""

import asyncio
import os
import time

from cog import BasePredictor

# How long a run waits for its gate file before giving up, so that a test
# which dies without opening the gate does not leave a worker stuck forever.
GATE_TIMEOUT_S = 60.0


async def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        await asyncio.sleep(0.01)


async def chatter(token: str, where: str, lines: int, seconds: float) -> None:
    for i in range(lines):
        print(f"{token}:{where}-{i}")
        await asyncio.sleep(seconds / lines)


class Predictor(BasePredictor):
    async def setup(self) -> None:
        print("async_slots: setup done")

    async def predict(
        self,
        token: str = "t",
        seconds: float = 0.0,
        lines: int = 1,
        spawn: bool = False,
        gate: str = "",
        started: str = "",
        marker: str = "",
    ) -> str:
        if started:
            open(started, "w").close()
        try:
            if gate:
                await wait_for_file(gate)
            if spawn:
                await asyncio.create_task(chatter(token, "task", lines, seconds))
            elif lines:
                await chatter(token, "run", lines, seconds)
            else:
                await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            if marker:
                with open(marker, "w") as f:
                    f.write("CancelledError")
            raise
        return f"done:{token}"
