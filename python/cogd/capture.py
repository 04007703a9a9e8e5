"""``sys.stdout`` and ``sys.stderr`` inside the worker.

Writes at the Python level go straight to the worker's log router
(``cogd._native.write_log``), which routes them in order with whatever C code
and child processes write to fd 1 and 2. Text is passed on a line at a time;
an unfinished line waits for its end or for ``flush()``, which the runner calls
when a run ends.
"""

from __future__ import annotations

import contextvars
import io
import sys
import threading

# An unfinished line longer than this is passed on without waiting for its end.
_MAX_PENDING = 64 * 1024

#: The slot of the run the current code belongs to; set by the runner for the
#: run's thread or task, and inherited by tasks the run starts.
current_slot: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "cogd_current_slot", default=None
)


class RunOutput(io.TextIOBase):
    """A text stream whose writes become log lines of the current run."""

    def __init__(self, source: str, fd: int) -> None:
        super().__init__()
        self._source = source
        self._fd = fd
        # Unfinished lines, per run, so concurrent runs never share a line.
        self._pending: dict[int | None, str] = {}
        self._lock = threading.Lock()
        # Bytes written to ``.buffer`` go through the file descriptor.
        self.buffer = open(fd, "wb", buffering=0, closefd=False)  # noqa: SIM115

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        from cogd import _native

        slot = current_slot.get()
        with self._lock:
            text_all = self._pending.pop(slot, "") + text
            cut = text_all.rfind("\n") + 1
            if cut == 0 and len(text_all) > _MAX_PENDING:
                cut = len(text_all)
            if cut < len(text_all):
                self._pending[slot] = text_all[cut:]
            if cut:
                _native.write_log(self._source, text_all[:cut], slot)
        return len(text)

    def flush(self) -> None:
        from cogd import _native

        slot = current_slot.get()
        with self._lock:
            pending = self._pending.pop(slot, "")
            if pending:
                _native.write_log(self._source, pending, slot)


def install() -> None:
    """Replace ``sys.stdout`` and ``sys.stderr`` with run-aware streams."""
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stdout = RunOutput("stdout", 1)
    sys.stderr = RunOutput("stderr", 2)
