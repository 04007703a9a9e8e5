"""A model whose behaviour is chosen by its input, so that most tests share it.

Every run may first sleep (`seconds`) and/or block until a file exists (`gate`),
which lets a test hold a run open for exactly as long as it needs (to look at
health, at temp dirs, or to collide with it) without guessing at timings.
Then `mode` picks what the run does:

- ok:         print "<token>:ok" and return "ok:<token>"
- raise:      print a line, then raise ValueError("boom")
- exit:       print a line, then os._exit(1) (the worker dies)
- segfault:   print a line, then read address 0 (SIGSEGV)
- channels:   write one line per output channel, stdout ones first, then stderr
- interleave: alternate Python-level prints to stdout and stderr
"""

import ctypes
import os
import subprocess
import sys
import time

from cog import BasePredictor, Input

# How long a run waits for its gate file before giving up, so that a test
# which dies without opening the gate does not leave a worker stuck forever.
GATE_TIMEOUT_S = 60.0


def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.01)


def write_channels(token: str) -> None:
    libc = ctypes.CDLL(None)

    # stdout, through every route a model's code can take to fd 1.
    print(f"{token}:out-1-print")
    os.write(1, f"{token}:out-2-os-write\n".encode())
    subprocess.run(["echo", f"{token}:out-3-subprocess"], check=True)
    libc.printf(b"%s\n", f"{token}:out-4-c-printf".encode())
    libc.fflush(None)
    line = f"{token}:out-5-c-write\n".encode()
    libc.write(1, line, len(line))

    # stderr, the same routes to fd 2.
    print(f"{token}:err-1-print", file=sys.stderr)
    os.write(2, f"{token}:err-2-os-write\n".encode())
    subprocess.run(["sh", "-c", f"echo '{token}:err-3-subprocess' >&2"], check=True)
    libc.fprintf(
        ctypes.c_void_p.in_dll(libc, "stderr"), b"%s\n", f"{token}:err-4-c-fprintf".encode()
    )
    libc.fflush(None)
    line = f"{token}:err-5-c-write\n".encode()
    libc.write(2, line, len(line))


class Predictor(BasePredictor):
    def setup(self) -> None:
        print("basic: setup done")

    def predict(
        self,
        mode: str = Input(default="ok", description="What the run does (see module docstring)"),
        token: str = Input(default="t", description="Marks this run's log lines and output"),
        seconds: float = 0.0,
        gate: str = "",
    ) -> str:
        if seconds:
            time.sleep(seconds)
        if gate:
            wait_for_file(gate)

        if mode == "ok":
            print(f"{token}:ok")
            return f"ok:{token}"
        if mode == "raise":
            print(f"{token}:about to raise")
            raise ValueError("boom")
        if mode == "exit":
            print(f"{token}:about to exit", flush=True)
            os._exit(1)
        if mode == "segfault":
            print(f"{token}:about to segfault", flush=True)
            ctypes.string_at(0)
        if mode == "channels":
            write_channels(token)
            return f"channels:{token}"
        if mode == "interleave":
            for i in range(10):
                print(f"{token}:stdout-{i}")
                print(f"{token}:stderr-{i}", file=sys.stderr)
            return f"interleave:{token}"
        raise ValueError(f"unknown mode {mode!r}")
