"""Cog's launcher, ``python -m cog.server.http``, as Cog-built images start it.

It accepts Cog's flags and starts cogd on the model in the current directory;
the predictor comes from ``COG_PREDICT_TYPE_STUB`` or ``cog.yaml``, the port
from ``PORT``. ``--x-mode train`` serves the training function instead
(``COG_TRAIN_TYPE_STUB`` or ``train:`` in ``cog.yaml``) on ``/trainings``.
"""

from __future__ import annotations

import argparse
import sys

from cogd.compat import Mode  # noqa: F401 - a public name of Cog's module


def _flag(value: str) -> bool:
    """Cog passes booleans as words: ``--await-explicit-shutdown true``."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_args(argv: list[str]) -> list[str]:
    """Translate Cog's launcher flags into ``cogd serve`` arguments."""
    parser = argparse.ArgumentParser(prog="python -m cog.server.http")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--threads", type=int, default=None, help="ignored")
    parser.add_argument("--upload-url", default=None)
    parser.add_argument(
        "--await-explicit-shutdown",
        type=_flag,
        nargs="?",
        const=True,
        default=False,
    )
    parser.add_argument("--x-mode", choices=["predict", "train"], default="predict")
    args = parser.parse_args(argv)
    out = ["cogd", "serve", ".", "--host", args.host]
    if args.upload_url:
        out += ["--upload-url", args.upload_url]
    if args.await_explicit_shutdown:
        out.append("--await-explicit-shutdown")
    if args.x_mode == "train":
        out.append("--train")
    return out


def main() -> int:
    """Start cogd with Cog's command line."""
    from cogd.cli import main as cogd_main

    return cogd_main(parse_args(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
