"""A model that produces outputs and log lines over time, for the webhook tests.

It yields `outputs` items "out-<i>", printing "line-<i>" before each and
sleeping `interval` seconds after each; then prints `flood` lines
"flood-<j>", spread over `flood_seconds`.
"""

import time
from collections.abc import Iterator

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(
        self,
        outputs: int = 3,
        interval: float = 0.2,
        flood: int = 0,
        flood_seconds: float = 1.0,
    ) -> Iterator[str]:
        for i in range(outputs):
            print(f"line-{i}")
            yield f"out-{i}"
            time.sleep(interval)
        if flood:
            deadline = time.monotonic()
            for j in range(flood):
                print(f"flood-{j}")
                # Pace against the clock, so the run lasts flood_seconds
                # however long each print takes.
                deadline += flood_seconds / flood
                pause = deadline - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
