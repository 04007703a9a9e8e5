"""Runs that return files: alone, in lists, in objects, yielded one by one,
large, through symlinks, and runs that fail or wait to be cancelled after
producing one.

tests/test_file_outputs.py serves each with COG_PREDICT_TYPE_STUB=predict.py:NAME.
Contents are made from the name and size, so a test can check every byte.
"""

import io
import os
import tempfile
import time
from collections.abc import Iterator

from cog import BaseModel, File, Path


def content(name: str, size: int) -> bytes:
    """`size` bytes that depend on `name`: what a test expects to receive."""
    seed = (name.encode() + b":") * (size // (len(name) + 1) + 1)
    return seed[:size]


def write(name: str, size: int) -> Path:
    """A new file `name` (in a directory of its own) holding content(name, size)."""
    path = os.path.join(tempfile.mkdtemp(prefix="cogd-test-out-"), name)
    with open(path, "wb") as f:
        f.write(content(name, size))
    return Path(path)


def one_path(name: str = "out.txt", size: int = 16) -> Path:
    return write(name, size)


def big_path(mib: int = 100) -> Path:
    """A file of `mib` MiB of zeros, made without writing them (sparse)."""
    path = os.path.join(tempfile.mkdtemp(prefix="cogd-test-big-"), "big.bin")
    with open(path, "wb") as f:
        f.truncate(mib * 1024 * 1024)
    return Path(path)


def list_of_paths(count: int = 3, size: int = 8) -> list[Path]:
    """`count` files that all have the same name, each in its own directory."""
    return [write("part.txt", size + i) for i in range(count)]


def file_object() -> File:
    """A file-like object: the worker copies it into the prediction's directory."""
    buffer = io.BytesIO(b"<p>hi</p>")
    buffer.name = "page.html"
    return buffer


class Result(BaseModel):
    caption: str
    image: Path
    extra: list[Path]


def in_object() -> Result:
    return Result(caption="c", image=write("image.png", 10), extra=[write("a.txt", 3)])


def iterate(count: int = 3, size: int = 8, gate_dir: str = "") -> Iterator[Path]:
    """Yields files; with `gate_dir`, waits after each for the file `sent-<i>`
    there (the test's receiver makes it when upload i arrives), so the run
    shows each file is sent while the run goes on, not at its end."""
    for i in range(count):
        yield write(f"output.{i}.txt", size)
        if gate_dir:
            gate = os.path.join(gate_dir, f"sent-{i}")
            deadline = time.monotonic() + 20
            while not os.path.exists(gate):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"file {i} was not sent while the run went on")
                time.sleep(0.01)


def symlink() -> Path:
    """A symlink (in its own directory) to a file elsewhere."""
    target = write("target.txt", 12)
    link = os.path.join(tempfile.mkdtemp(prefix="cogd-test-link-"), "link.txt")
    os.symlink(target, link)
    return Path(link)


def symlink_to_device() -> Path:
    """A symlink to /dev/zero: reading it would never end."""
    link = os.path.join(tempfile.mkdtemp(prefix="cogd-test-dev-"), "zero.bin")
    os.symlink("/dev/zero", link)
    return Path(link)


def given_path(path: str = "/proc/self/environ") -> Path:
    """Whatever path the caller names, as a file output."""
    return Path(path)


def long_text(mib: int = 20) -> str:
    """A string output far larger than one protocol frame."""
    return "x" * (mib * 1024 * 1024)


def echo(text: str = "") -> str:
    return text


def long_string(kind: str, size: int) -> str:
    """A string of `size` characters: plain ASCII, or text JSON must escape
    (quotes, backslashes, control characters) mixed with non-ASCII letters."""
    unit = "x" if kind == "ascii" else 'é漢"\\\n\x00\x1f\u2028a'
    return (unit * (size // len(unit) + 1))[:size]


def long_strings(size: int = 100_000) -> dict:
    """Long strings of both kinds beside short ones, at the top of an object,
    in a list and nested deeper, and a file: each long string is escaped by
    the worker's Rust side, the rest by Python's json."""
    return {
        "mixed": long_string("mixed", size),
        "short": 'a "short" one é',
        "items": [long_string("ascii", size), "b", {"deep": long_string("mixed", size + 1)}],
        "file": write("note.txt", 5),
    }


def stream_long_strings(size: int = 100_000) -> Iterator[str]:
    """Yields a short string, a long one that JSON must escape, a long ASCII one
    right after it (two large chunks in a row), another short one."""
    yield "small"
    yield long_string("mixed", size)
    yield long_string("ascii", size)
    yield "after"


def file_then_fail() -> Iterator[File]:
    """Yields a file object (copied into the prediction's directory), then raises."""
    yield file_object()
    raise RuntimeError("failed after a file")


def file_then_wait(gate: str = "") -> Iterator[File]:
    """Yields a file object, then waits until cancelled (or `gate` exists)."""
    yield file_object()
    while not (gate and os.path.exists(gate)):
        time.sleep(0.01)
