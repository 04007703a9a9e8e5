#!/usr/bin/env python3
"""Streaming benchmark: how fast a generator's chunks reach the client.

Starts `cogd serve bench/models/streaming` on a free port (or uses --url),
waits for READY, warms up, then measures three things:

1. latency: the run yields `str(time.time_ns())` --latency-yields times, pausing
   --pause-ms after each; the client, reading server-sent events, takes its own
   time.time_ns() when the bytes of each chunk arrive. Receive time minus stamp
   is the delay from the `yield` in Python to the chunk at the HTTP client
   (same machine, same clock). Median, p90, p99 in milliseconds.
2. throughput: the run yields --throughput-yields small strings as fast as it
   can, read over SSE to the end; total seconds (request sent to `completed`
   read) and chunks per second.
3. a --plain-yields generator end to end with a plain synchronous POST (no
   SSE), --plain-runs times on one keep-alive connection.

It measures; it does not judge (no thresholds). Only the standard library is
used, with http.client reading whatever has arrived in one go, so the client's
own cost stays small next to the server's. The helpers to start and find cogd
are bench.py's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # noqa: E402
    REPO,
    Client,
    own_server,
    percentile,
    wait_ready,
    write_json,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="benchmark this already-running server instead of starting cogd")
    p.add_argument("--cogd", help="cogd executable (default: next to this Python, then on PATH)")
    p.add_argument(
        "--model",
        default=str(REPO / "bench" / "models" / "streaming"),
        help="model dir to serve (default: bench/models/streaming)",
    )
    p.add_argument(
        "--latency-yields", type=int, default=1000, help="stamped chunks (default: 1000)"
    )
    p.add_argument(
        "--pause-ms",
        type=float,
        default=1.0,
        help="pause after each stamped chunk, in ms (default: 1)",
    )
    p.add_argument(
        "--throughput-yields",
        type=int,
        default=100_000,
        help="chunks yielded as fast as possible (default: 100000)",
    )
    p.add_argument(
        "--plain-yields",
        type=int,
        default=1000,
        help="chunks per plain POST (default: 1000)",
    )
    p.add_argument("--plain-runs", type=int, default=20, help="plain POSTs timed (default: 20)")
    p.add_argument(
        "--warmup", type=int, default=3, help="unmeasured runs of each kind first (default: 3)"
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for READY (default: 60)",
    )
    p.add_argument(
        "--json", metavar="FILE", help="also write the raw figures (incl. every latency) to FILE"
    )
    return p.parse_args()


class Event:
    """One server-sent event: its name, its data, and when its bytes arrived."""

    __slots__ = ("name", "data", "received_ns")

    def __init__(self, name: str, data: bytes, received_ns: int) -> None:
        self.name = name
        self.data = data
        # time.time_ns() when the read that completed the event returned.
        self.received_ns = received_ns

    @property
    def json(self) -> object:
        return json.loads(self.data)


class StreamRefusedError(RuntimeError):
    """The server answered something other than an event stream."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"expected an event stream, got {status}: {body[:300]!r}")
        self.status = status


def stream(host: str, port: int, prediction_input: dict) -> Iterator[Event]:
    """POST a prediction with `Accept: text/event-stream`; yield its events
    until the server ends the stream."""
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        body = json.dumps({"input": prediction_input}).encode()
        conn.request(
            "POST",
            "/predictions",
            body,
            {"Accept": "text/event-stream", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        content_type = resp.getheader("content-type", "")
        if resp.status != 200 or not content_type.startswith("text/event-stream"):
            raise StreamRefusedError(resp.status, resp.read())
        pending = b""
        name, data = "", []
        while True:
            # Whatever has arrived (at most one HTTP chunk), without waiting for more.
            block = resp.read1(1 << 16)
            if not block:
                return
            now = time.time_ns()
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not line:
                    if data:
                        yield Event(name or "message", b"\n".join(data), now)
                    name, data = "", []
                elif line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                elif line.startswith(b"event:"):
                    value = line[6:]
                    name = (value[1:] if value.startswith(b" ") else value).decode()
                # Anything else is a comment (keep-alive) or a field we do not use.
    finally:
        conn.close()


def summary_ms(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered) if ordered else float("nan"),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "min": ordered[0] if ordered else float("nan"),
        "max": ordered[-1] if ordered else float("nan"),
        "mean": statistics.fmean(ordered) if ordered else float("nan"),
    }


def final_of(events: list[Event]) -> dict:
    """The prediction in the last event, which must be `completed`."""
    last = events[-1] if events else None
    if last is None or last.name != "completed":
        tail = [(e.name, e.data[:200]) for e in events[-3:]]
        sys.exit(f"stream bench: the stream did not end with `completed`; last events: {tail}")
    final = last.json
    assert isinstance(final, dict)
    if final.get("status") != "succeeded":
        sys.exit(f"stream bench: the run ended {final.get('status')}: {final.get('error')}")
    return final


def measure_latency(host: str, port: int, yields: int, pause_ms: float) -> dict:
    prediction_input = {"count": yields, "pause_ms": pause_ms, "stamp": True}
    events = list(stream(host, port, prediction_input))
    final_of(events)
    latencies_ms = [
        (e.received_ns - int(e.json["chunk"])) / 1e6  # type: ignore[index]
        for e in events
        if e.name == "output"
    ]
    if len(latencies_ms) != yields:
        sys.exit(f"stream bench: expected {yields} chunks, got {len(latencies_ms)}")
    return {
        "yields": yields,
        "pause_ms": pause_ms,
        "latency_ms": summary_ms(latencies_ms),
        "latencies_ms": latencies_ms,
    }


def measure_throughput(host: str, port: int, yields: int) -> dict:
    sent = time.perf_counter()
    first_chunk_s = None
    received = 0
    events: list[Event] = []
    for event in stream(host, port, {"count": yields}):
        if event.name == "output":
            if first_chunk_s is None:
                first_chunk_s = time.perf_counter() - sent
            received += 1
        else:
            events.append(event)
    total_s = time.perf_counter() - sent
    final = final_of(events)
    if received != yields:
        sys.exit(f"stream bench: expected {yields} chunks, got {received}")
    return {
        "yields": yields,
        "total_s": total_s,
        "chunks_per_s": yields / total_s,
        "first_chunk_ms": (first_chunk_s or float("nan")) * 1000,
        "predict_time_s": final.get("metrics", {}).get("predict_time"),
    }


def measure_plain(client: Client, yields: int, runs: int) -> dict:
    body = json.dumps({"input": {"count": yields}}).encode()
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        status, data = client.post("/predictions", body)
        elapsed = time.perf_counter() - t0
        prediction = json.loads(data) if status == 200 else {}
        if prediction.get("status") != "succeeded" or len(prediction.get("output") or []) != yields:
            sys.exit(f"stream bench: plain POST answered {status}: {data[:300]!r}")
        seconds.append(elapsed)
    return {
        "yields": yields,
        "runs": runs,
        "total_ms": summary_ms([s * 1000 for s in seconds]),
        "seconds": seconds,
    }


def run(host: str, port: int, args: argparse.Namespace) -> dict:
    client = Client(host, port)
    for _ in range(args.warmup):
        list(stream(host, port, {"count": 100, "stamp": True}))
        client.post("/predictions", json.dumps({"input": {"count": args.plain_yields}}).encode())
    latency = measure_latency(host, port, args.latency_yields, args.pause_ms)
    throughput = measure_throughput(host, port, args.throughput_yields)
    plain = measure_plain(client, args.plain_yields, args.plain_runs)
    return {
        "url": f"http://{host}:{port}",
        "warmup": args.warmup,
        "latency": latency,
        "throughput": throughput,
        "plain_post": plain,
    }


def report(r: dict) -> None:
    lat, thr, plain = r["latency"], r["throughput"], r["plain_post"]
    ms = lat["latency_ms"]
    print(f"server:         {r['url']}")
    print(
        f"yield -> client: {lat['yields']} stamped chunks, {lat['pause_ms']:g} ms apart, over SSE"
    )
    print(
        f"  latency (ms):  p50 {ms['p50']:.3f}  p90 {ms['p90']:.3f}  p99 {ms['p99']:.3f}  "
        f"min {ms['min']:.3f}  max {ms['max']:.3f}"
    )
    print(f"throughput:     {thr['yields']} chunks as fast as possible, over SSE")
    print(
        f"  total {thr['total_s']:.3f} s  ->  {thr['chunks_per_s']:,.0f} chunks/s  "
        f"(first chunk after {thr['first_chunk_ms']:.1f} ms; "
        f"predict_time {thr['predict_time_s']:.3f} s)"
    )
    pms = plain["total_ms"]
    print(f"plain POST:     a {plain['yields']}-yield generator, {plain['runs']} runs, no SSE")
    print(
        f"  end to end (ms): p50 {pms['p50']:.2f}  p90 {pms['p90']:.2f}  "
        f"min {pms['min']:.2f}  max {pms['max']:.2f}"
    )


def main() -> None:
    args = parse_args()
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        wait_ready(host, port, args.startup_timeout, None)
        result = run(host, port, args)
    else:
        with own_server(args, args.model) as (host, port):
            result = run(host, port, args)
    report(result)
    if args.json:
        print(f"raw figures:    {write_json(args.json, result)}")


if __name__ == "__main__":
    main()
