"""The soak test's model: an async run on several slots (8 here; the soak
test sets its own count) whose `mode` says how it ends.

- ok:    print "<token>:ok" and return "ok:<token>"
- raise: print a line, then raise ValueError("boom")
- crash: print a line, then os._exit(1) (the worker dies, with every run in it)
- hold:  print a line, then wait until cancelled (a cancel request, or the
         client of a synchronous request going away)
- deaf:  print a line, then wait for `release` (a file), swallowing every
         cancel meanwhile, as a run stuck in a long native or GPU call does;
         then return "deaf:<token>"
- file:  return a file holding "<token>" (a file object, which the worker
         copies into the prediction's directory, removed once sent)

A held or deaf run gives up after an hour, so a test that dies without
ending it does not leave a worker busy forever.
"""

import asyncio
import io
import os
import time
from typing import Any

from cog import BasePredictor

HOLD_LIMIT_S = 3600.0
# How often a deaf run looks for its release file.
POLL_S = 0.01


async def deaf_until(release: str) -> None:
    """Wait until `release` exists; no cancel ends the wait."""
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not os.path.exists(release) and time.monotonic() < deadline:
        try:
            await asyncio.sleep(POLL_S)
        except asyncio.CancelledError:
            pass  # not heard: the run carries on


class Predictor(BasePredictor):
    async def predict(self, mode: str = "ok", token: str = "t", release: str = "") -> Any:
        if mode == "ok":
            print(f"{token}:ok")
            return f"ok:{token}"
        if mode == "raise":
            print(f"{token}:about to raise")
            raise ValueError("boom")
        if mode == "crash":
            print(f"{token}:about to exit", flush=True)
            os._exit(1)
        if mode == "hold":
            print(f"{token}:holding", flush=True)
            await asyncio.sleep(HOLD_LIMIT_S)
            return f"held:{token}"
        if mode == "deaf":
            print(f"{token}:deaf", flush=True)
            await deaf_until(release)
            return f"deaf:{token}"
        if mode == "file":
            out = io.BytesIO(token.encode())
            out.name = f"{token}.txt"
            return out
        raise ValueError(f"unknown mode {mode!r}")
