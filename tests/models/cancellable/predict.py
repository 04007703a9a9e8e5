"""A synchronous model for the cancellation, disconnect and queue tests.

Every run first appends its `token` to `runlog` (when given), so a test can
tell from outside which runs started and in what order, and touches `started`
(when given), so a test knows the run is under way. Then it waits for `gate`
(when given), and `mode` picks what it does:

- ok:      print "<token>:ok" and return "ok:<token>"
- busy:    spin in `while True: pass` (no calls for a cancel to hide behind)
- sleep:   time.sleep(seconds), a single blocking call
- reraise: time.sleep(seconds); on CancelationException write
           "CancelationException" to `marker`, then re-raise it
- swallow: time.sleep(seconds); on CancelationException write "swallowed" to
           `marker` and carry on sleeping in short naps forever

busy and sleep catch nothing, as most models' code does.
"""

import os
import time

from cog import BasePredictor, CancelationException

GATE_TIMEOUT_S = 60.0


def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.01)


def write(path: str, text: str) -> None:
    if path:
        with open(path, "w") as f:
            f.write(text)


class Predictor(BasePredictor):
    def predict(
        self,
        mode: str = "ok",
        token: str = "t",
        seconds: float = 60.0,
        gate: str = "",
        started: str = "",
        marker: str = "",
        runlog: str = "",
    ) -> str:
        if runlog:
            with open(runlog, "a") as f:
                f.write(token + "\n")
        if started:
            open(started, "w").close()

        if gate:
            wait_for_file(gate)

        if mode == "ok":
            print(f"{token}:ok")
            return f"ok:{token}"
        if mode == "busy":
            while True:
                pass
        if mode == "sleep":
            time.sleep(seconds)
            return f"slept:{token}"
        if mode == "reraise":
            try:
                time.sleep(seconds)
            except CancelationException:
                write(marker, "CancelationException")
                raise
            return f"slept:{token}"
        if mode == "swallow":
            try:
                time.sleep(seconds)
            except CancelationException:
                write(marker, "swallowed")
            while True:
                try:
                    time.sleep(0.1)
                except CancelationException:
                    # Swallow every later one too: only the grace period can
                    # end this run.
                    pass
        raise ValueError(f"unknown mode {mode!r}")
