#!/usr/bin/env python3
"""Sequential synchronous-prediction benchmark for a Cog-compatible server.

Starts `cogd serve examples/hello` on a free port (or uses --url), waits for
READY, warms up, then sends --requests predictions one after another on a
single keep-alive connection and reports throughput, latency percentiles and
non-200 answers. It measures; it does not judge (no thresholds).

Only the standard library is used, and http.client rather than requests, so
the client's own overhead stays small next to the server's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="benchmark this already-running server instead of starting cogd")
    p.add_argument("--cogd", help="cogd executable (default: next to this Python, then on PATH)")
    p.add_argument(
        "--model",
        default=str(REPO / "examples" / "hello"),
        help="model dir to serve (default: examples/hello)",
    )
    p.add_argument("--requests", type=int, default=2000, help="measured requests (default: 2000)")
    p.add_argument(
        "--warmup", type=int, default=100, help="unmeasured requests first (default: 100)"
    )
    p.add_argument(
        "--input",
        default='{"name": "bench"}',
        help="prediction input as JSON (default: %(default)s)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for READY (default: 60)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=1,
        help="concurrent clients, each with its own connection (default 1)",
    )
    p.add_argument(
        "--json", metavar="FILE", help="also write the raw figures (incl. every latency) to FILE"
    )
    return p.parse_args()


def find_cogd(explicit: str | None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "cogd"
    if beside.exists():
        return str(beside)
    from shutil import which

    found = which("cogd")
    if not found:
        sys.exit("bench: no cogd next to this Python or on PATH; pass --cogd PATH or --url URL")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_status(host: str, port: int) -> str | None:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", "/health-check")
        resp = conn.getresponse()
        return json.loads(resp.read()).get("status")
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_ready(host: str, port: int, timeout: float, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"bench: server exited with {proc.returncode} before READY")
        status = health_status(host, port)
        if status == "READY":
            return
        if status in ("SETUP_FAILED", "DEFUNCT"):
            sys.exit(f"bench: server is {status}")
        time.sleep(0.05)
    sys.exit(f"bench: server not READY after {timeout}s (last status: {status})")


class Client:
    """One keep-alive connection; reconnects (and counts it) if the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reconnects = 0
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        for attempt in (1, 2):
            try:
                self.conn.request("POST", path, body, headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._reconnect()
                return resp.status, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                if attempt == 2:
                    raise
                self._reconnect()
        raise AssertionError("unreachable")

    def _reconnect(self) -> None:
        self.reconnects += 1
        self.conn.close()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run(host: str, port: int, args: argparse.Namespace) -> dict:
    body = json.dumps({"input": json.loads(args.input)}).encode()
    clients = [Client(host, port) for _ in range(args.clients)]

    for _ in range(args.warmup):
        clients[0].post("/predictions", body)

    latencies_ms: list[float] = []
    http_statuses: Counter[int] = Counter()
    prediction_statuses: Counter[str] = Counter()
    lock = threading.Lock()
    perf = time.perf_counter

    def drive(client: Client, count: int) -> None:
        # Each client sends its next request the moment it has the reply.
        for _ in range(count):
            t0 = perf()
            status, data = client.post("/predictions", body)
            latency = (perf() - t0) * 1000
            outcome = json.loads(data).get("status", "?") if status == 200 else None
            with lock:
                latencies_ms.append(latency)
                http_statuses[status] += 1
                if outcome is not None:
                    prediction_statuses[outcome] += 1

    share, extra = divmod(args.requests, args.clients)
    threads = [
        threading.Thread(target=drive, args=(client, share + (1 if i < extra else 0)))
        for i, client in enumerate(clients)
    ]
    started = perf()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = perf() - started

    ordered = sorted(latencies_ms)
    non_200 = sum(n for code, n in http_statuses.items() if code != 200)
    return {
        "url": f"http://{host}:{port}",
        "requests": args.requests,
        "warmup": args.warmup,
        "input": json.loads(args.input),
        "elapsed_s": elapsed,
        "requests_per_s": args.requests / elapsed if elapsed else float("nan"),
        "latency_ms": {
            "p50": percentile(ordered, 50),
            "p90": percentile(ordered, 90),
            "p99": percentile(ordered, 99),
            "min": ordered[0] if ordered else float("nan"),
            "max": ordered[-1] if ordered else float("nan"),
            "mean": sum(ordered) / len(ordered) if ordered else float("nan"),
        },
        "http_status_counts": {str(k): v for k, v in sorted(http_statuses.items())},
        "conflicts_409": http_statuses.get(409, 0),
        "non_200_other": non_200 - http_statuses.get(409, 0),
        "prediction_status_counts": dict(prediction_statuses),
        "clients": args.clients,
        "reconnects": sum(c.reconnects for c in clients),
        "latencies_ms": latencies_ms,
    }


def report(r: dict) -> None:
    lat = r["latency_ms"]
    print(f"server:        {r['url']}")
    print(
        f"requests:      {r['requests']} from {r['clients']} client(s), each sequential "
        "on its own keep-alive connection"
    )
    print(f"warm-up:       {r['warmup']} requests, not measured")
    print(f"elapsed:       {r['elapsed_s']:.3f} s")
    print(f"throughput:    {r['requests_per_s']:.1f} requests/s")
    print(
        f"latency (ms):  p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
        f"min {lat['min']:.3f}  max {lat['max']:.3f}"
    )
    print(f"409 conflicts: {r['conflicts_409']}")
    print(f"other non-200: {r['non_200_other']}  (all statuses: {r['http_status_counts']})")
    print(f"predictions:   {r['prediction_status_counts']}")
    if r["reconnects"]:
        print(f"reconnects:    {r['reconnects']} (the server closed the keep-alive connection)")


def run_own_server(args: argparse.Namespace) -> dict:
    host, port = "127.0.0.1", free_port()
    cmd = [find_cogd(args.cogd), "serve", args.model, "--host", host, "--port", str(port)]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # Server logs go to a file, not the terminal, so they do not drown the report.
    with tempfile.NamedTemporaryFile(prefix="cogd-bench-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        print(f"started: {' '.join(cmd)} (logs: {log.name})", file=sys.stderr)
        try:
            wait_ready(host, port, args.startup_timeout, proc)
            return run(host, port, args)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    args = parse_args()
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        wait_ready(host, port, args.startup_timeout, None)
        result = run(host, port, args)
    else:
        result = run_own_server(args)

    report(result)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"raw figures:   {out}")


if __name__ == "__main__":
    main()
