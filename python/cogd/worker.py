"""The worker process entry: ``python -m cogd.worker``, spawned by the server.

All the work happens in ``cogd._native.run_worker``: it moves the control channel
off stdin/stdout and captures fd 1 and 2 before any model code is imported, then
runs the worker's event loop with ``cogd.runner.Runner`` as its handler.
"""

import sys


def main() -> int:
    """Run the worker until the server tells it to stop; returns the exit code."""
    from cogd import _native

    return _native.run_worker()


if __name__ == "__main__":
    sys.exit(main())
