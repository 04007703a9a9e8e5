"""The ``cogd`` command: parses nothing itself, hands ``argv`` to the Rust CLI."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``cogd`` with ``argv`` (default ``sys.argv``); workers use this interpreter."""
    from cogd import _native

    args = list(sys.argv if argv is None else argv)
    return _native.main(args, sys.executable)


if __name__ == "__main__":
    sys.exit(main())
