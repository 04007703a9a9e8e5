"""A streaming model (sync generator, `import cog` then `@cog.streaming`) for
the server-sent events tests.

Each run yields `chunks` items "chunk-<i>", each padded with "x" to `size`
characters when `size` is larger, sleeping `interval` seconds after each.

- `stamp`: append "@<time.monotonic()>" to each chunk as it is yielded, so a
  test on the same machine can tell how long the chunk took to reach it;
- `log`: print "out-<i>" to stdout and "err-<i>" to stderr before chunk i;
- `fail_after`: raise RuntimeError("midway") once that many chunks are out;
- `gate` + `hold_at`: before yielding chunk `hold_at`, wait for the `gate` file,
  so a test can look at (or attach to) a run that is known to be mid-stream.
"""

import os
import sys
import time
from collections.abc import Iterator

import cog
from cog import BasePredictor

# How long a run waits for its gate file before giving up, so that a test
# which dies without opening the gate does not leave a worker stuck forever.
GATE_TIMEOUT_S = 60.0


def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.005)


class Predictor(BasePredictor):
    @cog.streaming
    def predict(
        self,
        chunks: int = 5,
        interval: float = 0.0,
        size: int = 0,
        stamp: bool = False,
        log: bool = False,
        fail_after: int = -1,
        gate: str = "",
        hold_at: int = 0,
    ) -> Iterator[str]:
        for i in range(chunks):
            if i == fail_after:
                raise RuntimeError("midway")
            if gate and i == hold_at:
                wait_for_file(gate)
            if log:
                print(f"out-{i}")
                print(f"err-{i}", file=sys.stderr)
            chunk = f"chunk-{i}@{time.monotonic():.6f}" if stamp else f"chunk-{i}"
            yield chunk.ljust(size, "x")
            if interval:
                time.sleep(interval)
