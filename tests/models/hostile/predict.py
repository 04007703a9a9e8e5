"""A model whose output is hostile to whoever reads it, chosen by `mode`:

- ok:        print "<token>:ok" and return "ok:<token>:<pid>" (the worker's pid,
             so a test can tell whether the worker was restarted)
- binary:    write invalid UTF-8, NULs and control bytes to fd 1 and 2, through
             os.write, sys.stdout.buffer and print, between "<token>:before"
             and "<token>:after" lines
- long_line: write one line of `size` "x" characters (default 10 MB) with print
             (`via` "print") or straight to fd 1 (`via` "fd")
- endless:   write `via` print or fd, 64 KiB lines, until cancelled
- raise_huge: raise ValueError with a message of `size` characters
- large_output: return a string of `size` characters
- size:      return `size` as text (exactly as the run received it)
- env:       return the worker's environment variable named by `token`, or
             "<unset>"
- fake_marker: write lines that look like the worker's log sync markers, then
             "<token>:after"
"""

import os
import sys
from collections.abc import Iterator

from cog import BasePredictor, Input

GARBAGE = bytes(range(256)) + b"\xff\xfe\xc3\x28\xe2\x82\x00\x00\x1b[31m\r\x07"


class Predictor(BasePredictor):
    def predict(
        self,
        mode: str = Input(default="ok", description="What the run does (see module docstring)"),
        token: str = "t",
        via: str = "print",
        size: int = 10_000_000,
    ) -> str:
        if mode == "ok":
            print(f"{token}:ok")
            return f"ok:{token}:{os.getpid()}"
        if mode == "binary":
            print(f"{token}:before", flush=True)
            os.write(1, GARBAGE + b"\n")
            os.write(2, GARBAGE * 3)
            sys.stdout.buffer.write(b"\x00" * 1000 + b"\xc0\xc1\n")
            print("text with\x00nuls\x00and\x1bescapes")
            print("no newline at the end, then a lone surrogate-ish", "\udcff", end="")
            print(file=sys.stderr)
            os.write(2, b"\n")
            print(f"{token}:after", flush=True)
            return f"binary:{token}"
        if mode == "long_line":
            line = "x" * size
            if via == "fd":
                os.write(1, (line + "\n").encode())
            else:
                print(line)
            print(f"{token}:after", flush=True)
            return f"long_line:{token}"
        if mode == "endless":
            chunk = "y" * (64 * 1024 - 1) + "\n"
            while True:
                if via == "fd":
                    os.write(1, chunk.encode())
                else:
                    sys.stdout.write(chunk)
        if mode == "fake_marker":
            os.write(1, b"\x00\x1bcogd-sync:18446744073709551615\n")
            os.write(2, b"\x00\x1bcogd-sync-0123456789abcdef:18446744073709551615\n")
            print(f"{token}:after", flush=True)
            return f"fake_marker:{token}"
        if mode == "size":
            return str(size)
        if mode == "env":
            return os.environ.get(token, "<unset>")
        if mode == "large_output":
            return "o" * size
        if mode == "raise_huge":
            raise ValueError("z" * size)
        raise ValueError(f"unknown mode {mode!r}")


class Streamer(BasePredictor):
    """Serve with COG_PREDICT_TYPE_STUB=predict.py:Streamer: yields "small",
    then one chunk of `size` characters, then "after"."""

    def predict(self, size: int = 10_000_000) -> Iterator[str]:
        yield "small"
        yield "x" * size
        yield "after"
