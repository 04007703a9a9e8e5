"""The ``cogd`` command: parses nothing itself, hands ``argv`` to the Rust CLI.

When the package carries the standalone server (``cogd/bin/cogd-server``,
built by ``make install``), the command replaces this Python process with it:
the same CLI and server, without an interpreter and the SDK in the server's
memory (the parent's RSS roughly halves). Workers still run this interpreter.
Otherwise, or with ``COGD_IN_PROCESS=1``, the server runs here, through
``cogd._native``.
"""

import os
import sys
from pathlib import Path

#: The standalone server inside the installed package, if it was built.
BUNDLED_SERVER = Path(__file__).resolve().parent / "bin" / "cogd-server"


def main(argv: list[str] | None = None) -> int:
    """Run ``cogd`` with ``argv`` (default ``sys.argv``); workers use this interpreter."""
    args = list(sys.argv if argv is None else argv)
    if os.environ.get("COGD_IN_PROCESS") != "1" and os.access(BUNDLED_SERVER, os.X_OK):
        env = dict(os.environ)
        env.setdefault("COGD_PYTHON", sys.executable)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(BUNDLED_SERVER, ["cogd", *args[1:]], env)

    from cogd import _native

    return _native.main(args, sys.executable)


if __name__ == "__main__":
    sys.exit(main())
