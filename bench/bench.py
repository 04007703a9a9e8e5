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
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
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
    p.add_argument(
        "--scenario",
        choices=("hello", "validation"),
        default="hello",
        help="hello: one model (--model, --input); validation: what checking a 20-input "
        "request costs, bench/models/many_inputs against bench/models/trivial",
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


@contextlib.contextmanager
def own_server(args: argparse.Namespace, model: str) -> Iterator[tuple[str, int]]:
    """Serve `model` with cogd for the duration of the block; yields (host, port) once READY."""
    host, port = "127.0.0.1", free_port()
    cmd = [find_cogd(args.cogd), "serve", model, "--host", host, "--port", str(port)]
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
            yield host, port
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_own_server(args: argparse.Namespace) -> dict:
    with own_server(args, args.model) as (host, port):
        return run(host, port, args)


# A realistic request for bench/models/many_inputs: all 20 inputs given.
MANY_INPUTS = {
    "prompt": "an astronaut riding a horse on the moon, detailed, 8k",
    "negative_prompt": "blurry, low quality",
    "width": 768,
    "height": 768,
    "num_outputs": 1,
    "steps": 25,
    "guidance": 7.0,
    "strength": 0.75,
    "seed": 1234,
    "scheduler": "DDIM",
    "refine": "expert",
    "lora_scale": 0.5,
    "apply_watermark": False,
    "disable_safety_checker": True,
    # No file: fetching or decoding one is not what this scenario measures.
    "image": None,
    "mask": None,
    "high_noise_frac": 0.9,
    "output_format": "png",
    "output_quality": 90,
    "api_token": "not-a-real-token",
}


def validation_scenario(args: argparse.Namespace) -> dict:
    """What validating an input costs, against a trivial prediction's latency.

    Three servers run side by side: `trivial` (no inputs), `many_inputs` (20
    constrained inputs, all sent) and the same model with validation off (a
    copy whose pre-built schema has no `Input`, so the server checks nothing;
    the worker still coerces every input). Requests go round-robin, one
    keep-alive connection per server, so whatever else the machine does
    weighs on all three alike. Validation's cost is the difference between
    the two `many_inputs` servers; the whole 20-input overhead (bigger bodies,
    coercion, validation) the difference with `trivial`.
    """
    models = REPO / "bench" / "models"
    with tempfile.TemporaryDirectory(prefix="cogd-bench-") as tmp:
        unchecked = Path(tmp) / "many_inputs_unchecked"
        shutil.copytree(models / "many_inputs", unchecked)
        (unchecked / ".cog").mkdir()
        (unchecked / ".cog" / "openapi_schema.json").write_text(
            json.dumps({"openapi": "3.0.2", "info": {}, "paths": {}, "components": {}})
        )
        cases = {
            "trivial": (models / "trivial", {}),
            "validated": (models / "many_inputs", MANY_INPUTS),
            "unvalidated": (unchecked, MANY_INPUTS),
        }
        with contextlib.ExitStack() as stack:
            clients, bodies = {}, {}
            for name, (model, request) in cases.items():
                host, port = stack.enter_context(own_server(args, str(model)))
                clients[name] = Client(host, port)
                bodies[name] = json.dumps({"input": request}).encode()
            names = list(cases)
            latencies: dict[str, list[float]] = {name: [] for name in names}
            failures: Counter[str] = Counter()
            for round_number in range(args.warmup + args.requests):
                # Rotate who goes first, so no server always follows the same one.
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    t0 = time.perf_counter()
                    status, data = clients[name].post("/predictions", bodies[name])
                    elapsed = (time.perf_counter() - t0) * 1000
                    if status != 200 or json.loads(data).get("status") != "succeeded":
                        failures[name] += 1
                    if round_number >= args.warmup:
                        latencies[name].append(elapsed)

    summary = {}
    for name in names:
        ordered = sorted(latencies[name])
        summary[name] = {
            "p50": percentile(ordered, 50),
            "p90": percentile(ordered, 90),
            "mean": sum(ordered) / len(ordered),
        }
        lat = summary[name]
        print(
            f"{name:<12} p50 {lat['p50']:.3f} ms  p90 {lat['p90']:.3f} ms  "
            f"mean {lat['mean']:.3f} ms  failures {failures[name]}"
        )
    base = summary["trivial"]
    for label, a, b in (
        ("validation", "unvalidated", "validated"),
        ("20 inputs overall", "trivial", "validated"),
    ):
        for stat in ("p50", "mean"):
            delta = summary[b][stat] - summary[a][stat]
            print(
                f"{label} ({stat}): {delta:+.3f} ms = {delta / base[stat] * 100:+.1f}% "
                f"of a trivial prediction ({base[stat]:.3f} ms)"
            )
    return {"requests": args.requests, "summary": summary, "latencies_ms": latencies}


def write_json(path: str, figures: dict) -> Path:
    """Writes `figures` as indented JSON to `path` (making its directory)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return out


def main() -> None:
    args = parse_args()
    if args.scenario == "validation":
        results = validation_scenario(args)
        if args.json:
            print(f"raw figures:   {write_json(args.json, results)}")
        return
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        wait_ready(host, port, args.startup_timeout, None)
        result = run(host, port, args)
    else:
        result = run_own_server(args)

    report(result)
    if args.json:
        print(f"raw figures:   {write_json(args.json, result)}")


if __name__ == "__main__":
    main()
