"""A model whose setup takes a while and prints on every channel.

Setup blocks until the file named by $SETUP_GATE exists (so a test can look at
the server while setup is still running, for as long as it needs), or, when
that variable is unset, sleeps a second. Its last line is printed right before
it returns: servers have lost such lines before.
"""

import os
import sys
import time

from cog import BasePredictor

GATE_TIMEOUT_S = 60.0


class Predictor(BasePredictor):
    def setup(self) -> None:
        print("setup: first line")
        print("setup: a line on stderr", file=sys.stderr)
        os.write(1, b"setup: an os.write to fd 1\n")
        gate = os.environ.get("SETUP_GATE")
        if gate:
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            time.sleep(1.0)
        self.ready = True
        print("setup: last line, right before returning")

    def predict(self) -> str:
        print("predict: ran")
        return "ready" if self.ready else "not ready"
