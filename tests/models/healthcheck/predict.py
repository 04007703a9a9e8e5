"""Models with their own `healthcheck()`, for tests/test_healthcheck.py.

Each check appends a line to the file `HEALTH_CALLS` names (so a test can
count calls) and then does what the file `HEALTH_MODE` says (missing: true):

- true / false:  return that;
- raise:         print a line, then raise RuntimeError("disk full");
- sleep:N:       sleep N seconds, then return True;
- none:          return None (not a bool).

Setup waits for the file `SETUP_GATE` names, when set. `Predictor` is sync
(its check runs beside a sync run on the main thread);
`AsyncPredictor` has an async check and run. A run waits for the `gate` file;
with `spin` it burns CPU in Python while it waits, holding the GIL as much as
Python lets it.
"""

import asyncio
import os
import time

from cog import BasePredictor

GATE_TIMEOUT_S = 60.0


def wait_for_file(path: str, spin: bool = False) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        if spin:
            sum(range(10_000))
        else:
            time.sleep(0.01)


def begin_check() -> str:
    calls = os.environ.get("HEALTH_CALLS")
    if calls:
        with open(calls, "a") as f:
            f.write("call\n")
    path = os.environ.get("HEALTH_MODE", "")
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "true"


def outcome(mode: str):
    if mode == "raise":
        print("healthcheck: about to raise")
        raise RuntimeError("disk full")
    if mode == "none":
        return None
    return mode != "false"


class Predictor(BasePredictor):
    def setup(self) -> None:
        gate = os.environ.get("SETUP_GATE")
        if gate:
            wait_for_file(gate)

    def healthcheck(self) -> bool:
        mode = begin_check()
        if mode.startswith("sleep:"):
            time.sleep(float(mode.split(":")[1]))
            return True
        return outcome(mode)

    def predict(self, gate: str = "", spin: bool = False) -> str:
        print("predict: started")
        if gate:
            wait_for_file(gate, spin)
        print("predict: finished")
        return "done"


class AsyncPredictor(BasePredictor):
    async def healthcheck(self) -> bool:
        mode = begin_check()
        if mode.startswith("sleep:"):
            await asyncio.sleep(float(mode.split(":")[1]))
            return True
        return outcome(mode)

    async def predict(self, gate: str = "") -> str:
        while gate and not os.path.exists(gate):
            await asyncio.sleep(0.01)
        return "done"
