"""The soak test's model: an async run on 8 slots whose `mode` says how it
ends.

- ok:    print "<token>:ok" and return "ok:<token>"
- raise: print a line, then raise ValueError("boom")
- crash: print a line, then os._exit(1) (the worker dies, with every run in it)
- hold:  print a line, then wait until cancelled (a cancel request, or the
         client of a synchronous request going away)

A held run gives up after an hour, so a test that dies without cancelling it
does not leave a worker busy forever.
"""

import asyncio
import os

from cog import BasePredictor

HOLD_LIMIT_S = 3600.0


class Predictor(BasePredictor):
    async def predict(self, mode: str = "ok", token: str = "t") -> str:
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
        raise ValueError(f"unknown mode {mode!r}")
