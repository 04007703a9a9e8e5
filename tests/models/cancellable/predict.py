"""A synchronous model for the cancellation, disconnect and queue tests.

Every run first appends its `token` to `runlog` (when given), so a test can
tell from outside which runs started and in what order, and writes the
worker's pid to `started` (when given), so a test knows the run is under way
and in which worker. Then it waits for `gate` (when given), and `mode` picks
what it does:

- ok:      print "<token>:ok" and return "ok:<token>"
- busy:    spin in `while True: pass` (no calls for a cancel to hide behind)
- sleep:   time.sleep(seconds), a single blocking call
- reraise: time.sleep(seconds); on CancelationException write
           "CancelationException" to `marker`, then re-raise it
- swallow: time.sleep(seconds); on CancelationException write "swallowed" to
           `marker` and carry on sleeping in short naps forever
- deaf:    a run stuck where no cancel reaches it, as in a long native or GPU
           call: with the cancel signal blocked, wait for `release` (a file),
           then return "deaf:<token>" (the cancel, delivered then, may still
           end it as cancelled)

busy and sleep catch nothing, as most models' code does. `padding` is ignored:
a large one only makes the worker take longer to begin the run.
"""

import os
import signal
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
    """Write `text` to `path` at once: a reader never sees it half written."""
    if path:
        with open(path + ".part", "w") as f:
            f.write(text)
        os.replace(path + ".part", path)


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
        release: str = "",
        padding: str = "",
    ) -> str:
        if mode == "deaf":
            # Deaf before it says it started: no cancel can slip in first.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            try:
                write(started, str(os.getpid()))
                wait_for_file(release)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            return f"deaf:{token}"
        if runlog:
            with open(runlog, "a") as f:
                f.write(token + "\n")
        if started:
            write(started, str(os.getpid()))

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
