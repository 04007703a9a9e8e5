"""A model that records each run it starts, to count runs from outside.

Each run appends one line to `counter_file`, then sleeps `sleep` seconds, and
returns "<name>:<nonce>" where the nonce is new for every run: two responses
with the same output come from the same run.
"""

import time
import uuid

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def predict(
        self,
        counter_file: str = Input(description="File that gets one line per run"),
        name: str = Input(default="run"),
        sleep: float = Input(default=1.0),
    ) -> str:
        nonce = uuid.uuid4().hex
        with open(counter_file, "a") as f:
            f.write(nonce + "\n")
        time.sleep(sleep)
        return f"{name}:{nonce}"
