"""A model for the scale-out tests: sleeps, and logs each run's side effect.

Each run appends "start TOKEN REPLICA" to `runlog` (when given) before it
sleeps `seconds`, and "end TOKEN REPLICA" after, so a test can tell from
outside which runs began and which ran to completion, and on which replica
(`QUEUE_REPLICA` in the environment). It returns "done:TOKEN".
"""

import os
import time

from cog import BasePredictor

REPLICA = os.environ.get("QUEUE_REPLICA", "?")


def log(path: str, line: str) -> None:
    if path:
        # One write of one short line with O_APPEND: lines never interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


class Predictor(BasePredictor):
    def predict(self, token: str = "t", seconds: float = 0.02, runlog: str = "") -> str:
        log(runlog, f"start {token} {REPLICA}")
        time.sleep(seconds)
        log(runlog, f"end {token} {REPLICA}")
        return f"done:{token}"
