"""``sys.stdout`` and ``sys.stderr`` inside the worker.

Writes at the Python level go straight to the worker's log router
(``cogd._native.write_log``), which routes them in order with whatever C code
and child processes write to fd 1 and 2. Text is passed on a line at a time;
an unfinished line waits for its end or for ``flush()``, which the runner calls
when a run ends. Code that belongs to no run while runs are in progress (the
model's ``healthcheck()``) sets ``detached``; its output goes to the server's
log, never to a prediction's.
"""

from __future__ import annotations

import contextvars
import io
import re
import sys
import threading
from typing import Any

# An unfinished line longer than this is passed on without waiting for its end.
_MAX_PENDING = 64 * 1024

#: The slot of the run the current code belongs to; set by the runner for the
#: run's thread or task, and inherited by tasks the run starts.
current_slot: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "cogd_current_slot", default=None
)


#: True in code that belongs to no run (the model's healthcheck), set by the
#: runner; its output goes to the server's log even while a run is active.
detached: contextvars.ContextVar[bool] = contextvars.ContextVar("cogd_detached", default=False)

#: The key of detached output's unfinished line (slots are never negative).
_DETACHED = -1

#: What UTF-8 cannot encode in a Python string.
_SURROGATES = re.compile("[\ud800-\udfff]")


class LogStream(io.TextIOBase):
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

        owner = _DETACHED if detached.get() else current_slot.get()
        with self._lock:
            text_all = self._pending.pop(owner, "") + text
            cut = text_all.rfind("\n") + 1
            if cut == 0 and len(text_all) > _MAX_PENDING:
                cut = len(text_all)
            if cut < len(text_all):
                self._pending[owner] = text_all[cut:]
            if cut:
                self._send(_native, text_all[:cut], owner)
        return len(text)

    def _send(self, native: Any, text: str, owner: int | None) -> None:
        try:
            self._send_text(native, text, owner)
        except UnicodeEncodeError:
            # Lone surrogates (a file name decoded with surrogateescape, say)
            # are not UTF-8: as ``errors`` says, they are replaced, never raised
            # into the model's print().
            self._send_text(native, _SURROGATES.sub("\ufffd", text), owner)

    def _send_text(self, native: Any, text: str, owner: int | None) -> None:
        if owner == _DETACHED:
            native.write_log(self._source, text, None, True)
        else:
            native.write_log(self._source, text, owner)

    def flush(self) -> None:
        if not self._pending:
            # Nobody has an unfinished line: the common case, without the lock.
            return
        from cogd import _native

        owner = _DETACHED if detached.get() else current_slot.get()
        with self._lock:
            pending = self._pending.pop(owner, "")
            if pending:
                self._send(_native, pending, owner)


def install() -> None:
    """Replace ``sys.stdout`` and ``sys.stderr`` with run-aware streams."""
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stdout = LogStream("stdout", 1)
    sys.stderr = LogStream("stderr", 2)
