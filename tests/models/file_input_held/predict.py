"""Takes a file input (so its run needs a directory on disk), is held until a
gate file exists, then ends as `mode` says: ok, raise, or exit (the worker
dies)."""

import os
import time

from cog import BasePredictor, Path


class Predictor(BasePredictor):
    def predict(self, file: Path, gate: str, mode: str = "ok") -> str:
        # Held for at most a minute, so a test that dies never strands a worker.
        for _ in range(6000):
            if os.path.exists(gate):
                break
            time.sleep(0.01)
        if mode == "raise":
            raise ValueError("boom")
        if mode == "exit":
            os._exit(1)
        return file.read_text()
