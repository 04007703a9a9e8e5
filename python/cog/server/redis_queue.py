"""Cog's Redis worker launcher, ``python -m cog.server.redis_queue``.

Cog's worker of 2021-23 took predictions from a Redis Streams consumer group;
this launcher accepts its settings and starts cogd in queue mode on the model
in the current directory (``cogd serve . --queue-url …``), so images and
deployments that started that worker keep working. The entry format is the
one that worker read (``docs/scale-out.md``). The HTTP API stays up on
``PORT`` (default 5000) for probes and metrics.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Translate the worker's flags into ``cogd serve`` arguments and the
    environment variables they set."""
    parser = argparse.ArgumentParser(prog="python -m cog.server.redis_queue")
    parser.add_argument("--redis-url", required=True, help="redis://HOST:PORT/DB")
    parser.add_argument("--input-queue", required=True, help="the stream to consume")
    parser.add_argument("--upload-url", default=None, help="PUT file outputs under this URL")
    parser.add_argument("--consumer-id", required=True, help="this replica's consumer name")
    parser.add_argument("--model-id", default=None, help="logged only")
    parser.add_argument("--predict-timeout", type=float, default=None, help="seconds")
    parser.add_argument(
        "--max-failure-count",
        type=int,
        default=None,
        help="failed predictions in a row after which the worker stops",
    )
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args(argv)
    out = [
        "cogd",
        "serve",
        ".",
        "--host",
        args.host,
        "--queue-url",
        args.redis_url,
        "--queue-stream",
        args.input_queue,
        "--consumer",
        args.consumer_id,
    ]
    if args.upload_url:
        out += ["--upload-url", args.upload_url]
    env: dict[str, str] = {}
    if args.predict_timeout:
        env["COG_PREDICT_TIMEOUT"] = str(args.predict_timeout)
    if args.max_failure_count:
        env["COG_QUEUE_MAX_FAILURES"] = str(args.max_failure_count)
    if args.model_id:
        print(f"cog.server.redis_queue: serving model {args.model_id}", file=sys.stderr)
    return out, env


def main() -> int:
    """Start cogd with the Redis worker's command line."""
    from cogd.cli import main as cogd_main

    argv, env = parse_args(sys.argv[1:])
    os.environ.update(env)
    return cogd_main(argv)


if __name__ == "__main__":
    sys.exit(main())
