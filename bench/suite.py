#!/usr/bin/env python3
"""The benchmark suite: cogd side by side with the reference runtime and the floor.

`make bench` runs this. Every scenario runs against each server in turn, and
the whole set is repeated --rounds times with the servers' order rotated, so
whatever else the machine does weighs on all of them alike. It prints, per
figure, the median over the rounds for each server and the cogd/reference
ratio, and writes every round's raw figures to a JSON file.

The servers:
- cogd: `cogd serve MODEL` from the virtualenv `make install` filled.
- reference: Replicate's runtime, `cog==0.23.1` from PyPI (it brings coglet),
  installed by this script into bench/.venv-ref and started as Cog images do,
  `python -m cog.server.http` in the model directory with
  `COG_PREDICT_TYPE_STUB`.
- floor: `cogd-floor` (bench/tools), an HTTP server that only hands each
  request body over a Unix socket to a Python function and returns its answer;
  the least a Python-backed server can do. For uploads the floor is no
  server at all: the file written and sent straight to the receiver.

Throughput scenarios use `cogd-loadgen` (bench/tools), a Rust HTTP client on
one thread; latency scenarios that need SSE, webhooks or big bodies use the
standard library here. It measures; it does not judge: no figure makes it
fail. The targets column only says what each figure is measured against.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_bench import Event, StreamRefusedError, stream  # noqa: E402

from bench import MANY_INPUTS, REPO, find_cogd, free_port, wait_ready, write_json  # noqa: E402

BENCH = REPO / "bench"
MODELS = BENCH / "models"
HELLO = REPO / "examples" / "hello"
REFERENCE_VENV = BENCH / ".venv-ref"
REFERENCE_PACKAGE = "cog==0.23.1"
#: Where the reference runtime makes a directory for each prediction (its
#: inputs and outputs), whatever TMPDIR says, and leaves it.
REFERENCE_SCRATCH = Path("/tmp/coglet/predictions")
TOOLS = REPO / "target" / "release"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    p.add_argument(
        "--servers",
        default="cogd,reference,floor",
        help="comma-separated subset of cogd,reference,floor (default: all)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)",
    )
    p.add_argument("--cogd", help="cogd executable (default: next to this Python, then PATH)")
    p.add_argument(
        "--soak-requests",
        type=int,
        default=10_000,
        help="predictions in the sequential scenario, after which RSS and temp disk are "
        "read (default: 10000)",
    )
    p.add_argument(
        "--queue-entries",
        type=int,
        default=600,
        help="entries each replica count drains in the queue scenario (default: 600)",
    )
    p.add_argument(
        "--queue-latency-samples",
        type=int,
        default=100,
        help="XADD-to-start samples in the queue scenario (default: 100)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        default=str(BENCH / "results" / "suite.json"),
        help="where to write every round's figures (default: bench/results/suite.json)",
    )
    return p.parse_args()


# ---------------------------------------------------------------------------
# Servers


@dataclass
class Running:
    """A server being measured: where it listens and its process."""

    name: str
    host: str
    port: int
    proc: subprocess.Popen
    tmpdir: Path
    startup_s: float
    # Bytes and entries left in the server's TMPDIR once it has stopped.
    temp_left: tuple[int, int] = (0, 0)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


def predictor_ref(model: Path) -> str:
    """The `predict:` line of a model's cog.yaml (a tiny parser: the suite's
    models keep it on one line)."""
    for line in (model / "cog.yaml").read_text().splitlines():
        if line.startswith("predict:"):
            return line.split(":", 1)[1].strip().strip("\"'")
    raise SystemExit(f"bench: {model}/cog.yaml has no predict line")


def ensure_reference() -> Path:
    """The reference runtime's Python, installing it on first use."""
    python = REFERENCE_VENV / "bin" / "python"
    marker = REFERENCE_VENV / ".installed"
    if not marker.exists() or marker.read_text() != REFERENCE_PACKAGE:
        print(f"bench: installing {REFERENCE_PACKAGE} into {REFERENCE_VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(REFERENCE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", REFERENCE_PACKAGE], check=True)
        marker.write_text(REFERENCE_PACKAGE)
    return python


def ensure_tools() -> None:
    """Build cogd-loadgen and cogd-floor (a no-op when they are up to date)."""
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "cogd-bench"], cwd=REPO, check=True
    )


@dataclass
class Servers:
    """How to start each kind of server on a model.

    Every server gets the model as an image built by Cog's tools has it: a
    copy of the directory with `.cog/openapi_schema.json` (written by `cogd
    schema`). The reference runtime learns from that file, for one, that a
    model streams.
    """

    cogd: str
    reference_python: Path | None
    scratch: Path
    logs: list[Path] = field(default_factory=list)
    built: dict[Path, Path] = field(default_factory=dict)

    def image(self, model: Path) -> Path:
        if model not in self.built:
            copy = self.scratch / "models" / model.name
            shutil.copytree(model, copy)
            schema = subprocess.run(
                [self.cogd, "schema", str(copy)], check=True, capture_output=True, text=True
            ).stdout
            (copy / ".cog").mkdir(exist_ok=True)
            (copy / ".cog" / "openapi_schema.json").write_text(schema)
            self.built[model] = copy
        return self.built[model]

    def command(
        self,
        name: str,
        model: Path,
        port: int,
        slots: int,
        upload_url: str | None,
        extra_env: dict[str, str] | None = None,
    ) -> tuple[list[str], dict[str, str], Path | None]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COG_")}
        env.update(extra_env or {})
        if slots > 1:
            env["COG_MAX_CONCURRENCY"] = str(slots)
        upload = ["--upload-url", upload_url] if upload_url else []
        if name == "cogd":
            bin_dir = str(Path(sys.executable).parent)
            env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
            cmd = [self.cogd, "serve", str(model), "--host", "127.0.0.1", "--port", str(port)]
            return cmd + upload, env, None
        if name == "reference":
            assert self.reference_python is not None
            env["PATH"] = f"{self.reference_python.parent}{os.pathsep}{env.get('PATH', '')}"
            env["PORT"] = str(port)
            env["COG_PREDICT_TYPE_STUB"] = predictor_ref(model)
            cmd = [str(self.reference_python), "-m", "cog.server.http", "--host", "127.0.0.1"]
            return cmd + upload, env, model
        if name == "floor":
            mode = "async" if slots > 1 else "sync"
            cmd = [
                str(TOOLS / "cogd-floor"),
                "--port",
                str(port),
                "--python",
                sys.executable,
                "--worker",
                str(BENCH / "floor_worker.py"),
                "--mode",
                mode,
                "--connections",
                str(slots),
            ]
            return cmd, env, None
        raise ValueError(name)

    @contextlib.contextmanager
    def serve(
        self,
        name: str,
        model: Path,
        slots: int = 1,
        upload_url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Iterator[Running]:
        port = free_port()
        model = self.image(model)
        cmd, env, cwd = self.command(name, model, port, slots, upload_url, env)
        tmpdir = Path(tempfile.mkdtemp(prefix=f"{name}-tmp-", dir=self.scratch))
        env["TMPDIR"] = str(tmpdir)
        log = self.scratch / f"{name}-{model.name}-{port}.log"
        self.logs.append(log)
        # What the reference leaves outside TMPDIR counts as left in temp too.
        elsewhere = REFERENCE_SCRATCH if name == "reference" else None
        before = entries(elsewhere)
        with open(log, "wb") as out:
            started = time.perf_counter()
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        running = None
        try:
            wait_ready("127.0.0.1", port, 120, proc)
            running = Running(name, "127.0.0.1", port, proc, tmpdir, time.perf_counter() - started)
            yield running
        finally:
            stop(proc)
            left = [tmpdir]
            if elsewhere is not None:
                left += [elsewhere / n for n in sorted(entries(elsewhere) - before)]
            if running is not None:
                counts = [disk_bytes(path) for path in left]
                # The new directories themselves are entries left too.
                running.temp_left = (
                    sum(b for b, _ in counts),
                    sum(e for _, e in counts) + len(left) - 1,
                )
            subprocess.run(["rm", "-rf", *map(str, left)], check=False)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL to the whole process group if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` in MiB (0 if it has gone)."""
    with (
        contextlib.suppress(FileNotFoundError, ProcessLookupError),
        open(f"/proc/{pid}/status") as f,
    ):
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def entries(path: Path | None) -> set[str]:
    """The names in directory `path` (none when it is `None` or missing)."""
    if path is None:
        return set()
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def disk_bytes(path: Path) -> tuple[int, int]:
    """Bytes and entries under `path`, not counting `path` itself."""
    total, entries = 0, 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            entries += 1
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total, entries


# ---------------------------------------------------------------------------
# Helpers: a load generator run, a receiver for webhooks and uploads


def loadgen(server: Running, body: dict, connections: int, requests: int, warmup: int) -> dict:
    out = subprocess.run(
        [
            str(TOOLS / "cogd-loadgen"),
            "--url",
            f"{server.base}/predictions",
            "--body",
            json.dumps(body),
            "--connections",
            str(connections),
            "--requests",
            str(requests),
            "--warmup",
            str(warmup),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def load_figures(r: dict) -> dict[str, float]:
    """The figures of a `cogd-loadgen` report: successes per second,
    latency, and the answers that were not successes, 409s apart."""
    return {
        "succeeded_per_s": r["succeeded_per_s"],
        "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "answers_409": r["http"].get("409", 0),
        "answers_other_non_2xx": sum(
            n for code, n in r["http"].items() if not code.startswith("2") and code != "409"
        )
        + r["transport_errors"],
    }


class Receiver:
    """A loopback HTTP server that takes webhooks (POST) and uploads (PUT).

    It counts requests, the TCP connections they came on, and uploaded bytes,
    and notes when a `completed` webhook arrives.
    """

    def __init__(self) -> None:
        receiver = self
        self.lock = threading.Lock()
        self.requests = 0
        self.connections: set[tuple[str, int]] = set()
        self.uploaded = 0
        self.completed = threading.Event()
        self.sink = bytearray(1 << 20)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _read(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_POST(self) -> None:  # noqa: N802
                data = self._read()
                with receiver.lock:
                    receiver.requests += 1
                    receiver.connections.add(self.client_address)
                if json.loads(data).get("status") in ("succeeded", "failed", "canceled"):
                    receiver.completed.set()
                self._answer(200, {})

            def _drain(self) -> int:
                """Reads a body with a length into one reused buffer and counts
                it: an upload target's own cost (a fresh 20 MiB `bytes` per
                upload costs this Python server as much as the sender) is not
                the sender's latency."""
                if "Content-Length" not in self.headers:
                    return len(self._read())
                left = int(self.headers["Content-Length"])
                view = memoryview(receiver.sink)
                while left > 0:
                    n = self.rfile.readinto(view[: min(left, len(view))])
                    if not n:
                        break
                    left -= n
                return int(self.headers["Content-Length"]) - left

            def do_PUT(self) -> None:  # noqa: N802
                size = self._drain()
                with receiver.lock:
                    receiver.requests += 1
                    receiver.uploaded += size
                self._answer(201, {"Location": f"http://{self.headers['Host']}{self.path}"})

            def _answer(self, status: int, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Conflicts:
    """409 answers seen by `post`, which retries them (the reference answers
    409 to a request sent right after the previous reply, SPEC section 7)."""

    count = 0


def post(server: Running, body: dict, headers: dict[str, str] | None = None) -> dict:
    return json.loads(reply(server, body, headers)[1])


def reply(
    server: Running, body: dict, headers: dict[str, str] | None = None
) -> tuple[float, bytes]:
    """Seconds from sending `body` to reading the last byte of the reply (409s
    retried, their time included), and the reply."""
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    for _ in range(1000):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
        try:
            conn.request(
                "POST",
                "/predictions",
                data,
                {"Content-Type": "application/json", **(headers or {})},
            )
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        if resp.status == 409:
            Conflicts.count += 1
            time.sleep(0.001)
            continue
        elapsed = time.perf_counter() - t0
        if resp.status not in (200, 201, 202):
            raise RuntimeError(f"{server.name}: {resp.status} {payload[:300]!r}")
        return elapsed, payload
    raise RuntimeError(f"{server.name}: 409 to 1000 attempts in a row")


def timed_output(
    repeats: int, server: Running, body: dict, check: Callable[[object], None]
) -> tuple[float, float]:
    """Median milliseconds of `repeats` requests, after one unmeasured one: to
    the reply's last byte (the server's latency), and to the reply parsed too
    (what a Python client waits for; the parse alone is 20-30 ms for 20 MiB,
    the same for every server). Each output is checked after its clock stops."""
    last_byte, parsed = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        seconds, payload = reply(server, body)
        output = succeeded(json.loads(payload))["output"]
        with_parse = time.perf_counter() - t0
        check(output)
        if i:
            last_byte.append(seconds * 1000)
            parsed.append(with_parse * 1000)
    return statistics.median(last_byte), statistics.median(parsed)


def timed(repeats: int, call: Callable[[], object]) -> float:
    """Median milliseconds of `repeats` calls, after one unmeasured call."""
    call()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds) * 1000


def succeeded(prediction: dict) -> dict:
    if prediction.get("status") != "succeeded":
        raise RuntimeError(f"prediction {prediction.get('status')}: {prediction.get('error')}")
    return prediction


# ---------------------------------------------------------------------------
# Scenarios: each takes the server kind and returns {figure: value}.


def sequential(servers: Servers, name: str, args: argparse.Namespace) -> dict:
    """One client, one request after another, on examples/hello; then RSS and
    temp disk after all of them, and the time the server took to be READY."""
    with servers.serve(name, HELLO) as server:
        r = loadgen(server, {"input": {"name": "bench"}}, 1, args.soak_requests, 200)
        figures = {
            "startup_s": server.startup_s,
            **load_figures(r),
            "parent_rss_mib": rss_mib(server.proc.pid),
        }
        if name != "floor":
            figures["worker_rss_mib"] = sum(rss_mib(pid) for pid in descendants(server.proc.pid))
    if name != "floor":
        figures["temp_bytes_left"], figures["temp_entries_left"] = server.temp_left
    return figures


def async16(servers: Servers, name: str, args: argparse.Namespace) -> dict:
    """16 slots, 16 clients each sending its next request as soon as it has the
    reply, on an async model that yields to the event loop once."""
    with servers.serve(name, MODELS / "async_sleep0", slots=16) as server:
        return load_figures(loadgen(server, {"input": {"name": "bench"}}, 16, 10_000, 400))


#: `batching`: the batched model's `max_wait_ms` (bench/models/batch_sleep).
BATCH_WAIT_MS = 2.0


def batching(servers: Servers, name: str, args: argparse.Namespace) -> dict:
    """32 clients on a model costing 5 ms + 0.2 ms per item (sleep), without
    and with `@cog.batch(max_size=32)`; then one client alone on each, for the
    wait a lone request adds (the batched model's `max_wait_ms`, 2 ms)."""
    env = {"COG_QUEUE_SIZE": "64"}
    body = {"input": {"text": "bench"}}
    figures: dict[str, float] = {}
    lone: dict[str, float] = {}
    for label, model, requests in (
        ("unbatched", MODELS / "cost_sleep", 2_000),
        ("batched", MODELS / "batch_sleep", 10_000),
    ):
        with servers.serve(name, model, env=env) as server:
            load = load_figures(loadgen(server, body, 32, requests, 320))
            figures[f"{label}_per_s"] = load["succeeded_per_s"]
            figures[f"{label}_p50_ms"] = load["p50_ms"]
            figures[f"{label}_p99_ms"] = load["p99_ms"]
            figures[f"{label}_409s"] = load["answers_409"]
            if label == "batched":
                count, total = batch_sizes(server)
                figures["mean_batch_size"] = total / count if count else 0.0
            lone[label] = loadgen(server, body, 1, 200, 20)["latency_ms"]["p50"]
    figures["throughput_ratio"] = figures["batched_per_s"] / figures["unbatched_per_s"]
    figures["lone_added_wait_ms"] = lone["batched"] - lone["unbatched"]
    figures["max_wait_ms"] = BATCH_WAIT_MS
    return figures


def batch_sizes(server: Running) -> tuple[float, float]:
    """`cogd_batch_size`'s count and sum from the server's `/metrics`."""
    with urllib.request.urlopen(f"{server.base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = {}
    for line in text.splitlines():
        for key in ("cogd_batch_size_count", "cogd_batch_size_sum"):
            if line.startswith(key + " "):
                found[key] = float(line.split()[1])
    return found.get("cogd_batch_size_count", 0.0), found.get("cogd_batch_size_sum", 0.0)


def events(server: Running, prediction_input: dict) -> Iterator[Event]:
    """The events of one streamed prediction, retrying 409s like `post`."""
    for _ in range(1000):
        try:
            yield from stream(server.host, server.port, prediction_input)
            return
        except StreamRefusedError as refused:
            if refused.status != 409:
                raise
            Conflicts.count += 1
            time.sleep(0.001)
    raise RuntimeError(f"{server.name}: 409 to 1000 attempts in a row")


#: The start of an `output` event's lines, with or without the optional space.
OUTPUT_EVENT = re.compile(rb"(?:^|\n)event: ?output\r?\n")
COMPLETED_EVENT = re.compile(rb"(?:^|\n)event: ?completed\r?\n")


def first_chunk_ms(server: Running, count: int) -> float:
    """Milliseconds from the moment the request is written to the moment the
    first `output` event has arrived, on a connection opened beforehand with
    Nagle off, read with plain `recv` (no HTTP library between the socket and
    the clock). The rest of the stream is read to its end."""
    body = json.dumps({"input": {"count": count}}).encode()
    request = (
        f"POST /predictions HTTP/1.1\r\nHost: {server.host}\r\n"
        "Accept: text/event-stream\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    for _ in range(1000):
        with socket.create_connection((server.host, server.port), timeout=300) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sent = time.perf_counter()
            conn.sendall(request)
            received = bytearray()
            first = None
            while True:
                block = conn.recv(1 << 16)
                if not block:
                    break
                # Search only what may hold a marker that arrived in pieces.
                start = max(0, len(received) - 32)
                received += block
                if first is None and OUTPUT_EVENT.search(received, start):
                    first = time.perf_counter() - sent
                if COMPLETED_EVENT.search(received, start):
                    break
        if received.startswith(b"HTTP/1.1 409"):
            Conflicts.count += 1
            time.sleep(0.001)
            continue
        if first is None:
            raise RuntimeError(f"{server.name}: no output event in {bytes(received[:300])!r}")
        return first * 1000
    raise RuntimeError(f"{server.name}: 409 to 1000 attempts in a row")


def yields_1000(servers: Servers, name: str, args: argparse.Namespace) -> dict:
    """A generator yielding 1,000 strings: end to end by a plain POST, the first
    chunk by SSE, and the webhooks one async prediction sends."""
    with servers.serve(name, MODELS / "streaming") as server:
        body = {"input": {"count": 1000}}
        total = timed(10, lambda: succeeded(post(server, body)))
        firsts = [first_chunk_ms(server, 1000) for _ in range(10)]
        receiver = Receiver()
        try:
            t0 = time.perf_counter()
            post(
                server,
                {**body, "webhook": f"{receiver.url}/hook"},
                {"Prefer": "respond-async"},
            )
            if not receiver.completed.wait(60):
                raise RuntimeError(f"{name}: no completed webhook within 60 s")
            webhook_total = (time.perf_counter() - t0) * 1000
            time.sleep(0.2)  # late, out-of-order deliveries still count
            with receiver.lock:
                hooks, conns = receiver.requests, len(receiver.connections)
        finally:
            receiver.close()
        return {
            "total_ms": total,
            "sse_first_chunk_ms": statistics.median(firsts),
            "webhook_run_ms": webhook_total,
            "webhooks_sent": hooks,
            "webhook_connections": conns,
        }


def yields_100k(servers: Servers, name: str, args: argparse.Namespace) -> dict:
    """A generator yielding 100,000 strings as fast as it can, read over SSE."""
    with servers.serve(name, MODELS / "streaming") as server:
        first_chunk_ms(server, 100)
        t0 = time.perf_counter()
        chunks = sum(1 for e in events(server, {"count": 100_000}) if e.name == "output")
        seconds = time.perf_counter() - t0
        if chunks != 100_000:
            raise RuntimeError(f"{name}: {chunks} chunks of 100000")
        return {"chunks_per_s": chunks / seconds, "total_ms": seconds * 1000}


MIB20 = 20 << 20


def big_outputs(servers: Servers, name: str, args: argparse.Namespace) -> dict:
    """A 20 MiB string output, a 20 MiB file output inline (data URI) and an
    8 MiB string input: median latency of five (to the reply's last byte,
    and to the reply parsed by the client too), and MB/s for the file."""
    figures = {}
    body = {"input": {"mib": 20}}
    with servers.serve(name, MODELS / "big_string") as server:

        def string(out: object) -> None:
            assert isinstance(out, str) and len(out) == MIB20

        figures["string_20mib_ms"], figures["string_20mib_parsed_ms"] = timed_output(
            5, server, body, string
        )
    with servers.serve(name, MODELS / "big_file") as server:

        def inline(out: object) -> None:
            assert isinstance(out, str) and out.startswith("data:"), str(out)[:80]

        figures["file_20mib_inline_ms"], figures["file_20mib_inline_parsed_ms"] = timed_output(
            5, server, body, inline
        )
        figures["file_20mib_inline_mb_per_s"] = (
            MIB20 / 1e6 / (figures["file_20mib_inline_ms"] / 1000)
        )
    with servers.serve(name, MODELS / "echo_len") as server:
        text = "y" * (8 << 20)

        def big_input() -> None:
            assert succeeded(post(server, {"input": {"text": text}}))["output"] == len(text)

        figures["input_8mib_ms"] = timed(5, big_input)
    return figures


def uploads(servers: Servers, name: str, args: argparse.Namespace) -> dict:
    """A 20 MiB file output sent with --upload-url to a loopback receiver; for
    the floor, the same file written and sent without a server between."""
    receiver = Receiver()
    try:
        if name == "floor":
            ms = upload_floor(receiver, 5)
            return {
                "file_20mib_upload_ms": ms,
                "file_20mib_upload_mb_per_s": MIB20 / 1e6 / (ms / 1000),
            }
        with servers.serve(name, MODELS / "big_file", upload_url=f"{receiver.url}/up/") as server:

            def uploaded(out: object) -> None:
                assert isinstance(out, str) and out.startswith(receiver.url), str(out)[:80]

            ms, _ = timed_output(5, server, {"input": {"mib": 20}}, uploaded)
            if receiver.uploaded != 6 * MIB20:
                raise RuntimeError(f"{name}: {receiver.uploaded} bytes uploaded of {6 * MIB20}")
            return {
                "file_20mib_upload_ms": ms,
                "file_20mib_upload_mb_per_s": MIB20 / 1e6 / (ms / 1000),
            }
    finally:
        receiver.close()


def upload_floor(receiver: Receiver, repeats: int) -> float:
    """The part of an upload no server can take away, in median milliseconds
    of `repeats` after one unmeasured: the model's own write of its 20 MiB
    file (as bench/models/big_file writes it), then the file sent to the
    receiver by `sendfile` on a connection opened beforehand, up to the
    receiver's answer. What a server adds to this is its own cost."""
    host, port = receiver.server.server_address[:2]
    block = os.urandom(1 << 20)
    head = f"PUT /up/floor.bin HTTP/1.1\r\nHost: {host}:{port}\r\n"
    times = []
    with socket.create_connection((host, port), timeout=60) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answers = conn.makefile("rb")
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            fd, name = tempfile.mkstemp(suffix=".bin")
            try:
                with os.fdopen(fd, "wb") as f:
                    for _ in range(20):
                        f.write(block)
                with open(name, "rb") as f:
                    conn.sendall(f"{head}Content-Length: {MIB20}\r\n\r\n".encode())
                    conn.sendfile(f)
                status = answers.readline()
                while answers.readline() not in (b"\r\n", b""):
                    pass  # the answer's headers; its body is empty
            finally:
                os.unlink(name)
            if not status.startswith(b"HTTP/1.1 201"):
                raise RuntimeError(f"floor: the receiver answered {status!r}")
            if i:
                times.append((time.perf_counter() - t0) * 1000)
    if receiver.uploaded != (repeats + 1) * MIB20:
        raise RuntimeError(f"floor: {receiver.uploaded} bytes uploaded of {(repeats + 1) * MIB20}")
    return statistics.median(times)


def validation(servers: Servers, name: str, args: argparse.Namespace) -> dict:
    """What a 20-input request costs over a no-input one (p50 difference)."""
    p50, ok = {}, {}
    for model, inputs in (("trivial", {}), ("many_inputs", MANY_INPUTS)):
        with servers.serve(name, MODELS / model) as server:
            r = loadgen(server, {"input": inputs}, 1, 2000, 200)
            p50[model], ok[model] = r["latency_ms"]["p50"], r["succeeded"] / r["requests"]
    return {
        "trivial_p50_ms": p50["trivial"],
        "many_inputs_p50_ms": p50["many_inputs"],
        "cost_ms": p50["many_inputs"] - p50["trivial"],
        # A server that refuses the request answers fast: only successes count.
        "many_inputs_succeeded_share": ok["many_inputs"],
    }


@contextlib.contextmanager
def redis_server(scratch: Path) -> Iterator[tuple[int, object]]:
    """A redis-server of its own on a free loopback port, nothing on disk."""
    import redis

    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="redis-", dir=scratch))
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    cmd += ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        for _ in range(500):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.01)
        yield port, client
    finally:
        stop(proc)


def drain_time(client: object, stream: str, count: int, timeout: float = 300.0) -> float:
    """Seconds from adding `count` entries to `stream` (in one pipeline) to
    the group having read and acknowledged them all."""
    groups = client.xinfo_groups(stream)  # type: ignore[attr-defined]
    before = groups[0]["entries-read"] or 0 if groups else 0
    pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for _ in range(count):
        pipe.xadd(stream, {"value": json.dumps({"input": {}})})
    started = time.perf_counter()
    pipe.execute()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [group] = client.xinfo_groups(stream)  # type: ignore[attr-defined]
        if (group["entries-read"] or 0) >= before + count and group["pending"] == 0:
            return time.perf_counter() - started
        time.sleep(0.005)
    raise RuntimeError(f"{stream}: entries not all acknowledged within {timeout}s")


def queue(servers: Servers, name: str, args: argparse.Namespace) -> dict:
    """Replicas (1 slot each) of a 20 ms sleep model on one Redis stream:
    entries per second with 1, 2 and 4 replicas, and the time from XADD to
    the model's run beginning on an idle replica."""
    figures: dict[str, float] = {}
    with redis_server(servers.scratch) as (port, client):
        url = f"redis://127.0.0.1:{port}/0"
        for replicas in (1, 2, 4):
            stream = f"bench:{replicas}"
            with contextlib.ExitStack() as stack:
                for i in range(replicas):
                    env = {
                        "COG_QUEUE_URL": url,
                        "COG_QUEUE_STREAM": stream,
                        "COG_QUEUE_CONSUMER": f"r{i}",
                    }
                    stack.enter_context(servers.serve(name, MODELS / "sleep20", env=env))
                # Until each group exists and every worker has run once.
                for _ in range(200):
                    if client.exists(stream) and client.xinfo_groups(stream):
                        break
                    time.sleep(0.01)
                drain_time(client, stream, 8 * replicas)
                seconds = drain_time(client, stream, args.queue_entries)
                figures[f"replicas_{replicas}_per_s"] = args.queue_entries / seconds
        figures["scale_4_over_1"] = figures["replicas_4_per_s"] / figures["replicas_1_per_s"]
        env = {"COG_QUEUE_URL": url, "COG_QUEUE_STREAM": "bench:latency"}
        with servers.serve(name, MODELS / "sleep20", env=env):
            latencies = []
            for i in range(args.queue_latency_samples + 5):
                key = f"bench:latency:{i}"
                request = {"input": {"seconds": 0}, "response_queue": key}
                time.sleep(0.02)  # idle: nothing running, the reader blocked
                added = time.time()
                client.xadd("bench:latency", {"value": json.dumps(request)})
                for _ in range(5000):
                    value = client.get(key)
                    if value and json.loads(value)["status"] == "succeeded":
                        break
                    time.sleep(0.001)
                else:
                    raise RuntimeError("a latency entry did not finish")
                latencies.append((json.loads(value)["output"] - added) * 1000)
            latencies = latencies[5:]  # the first runs warm the model up
            figures["xadd_to_start_p50_ms"] = statistics.median(latencies)
            figures["xadd_to_start_p90_ms"] = statistics.quantiles(latencies, n=10)[-1]
    return figures


SCENARIOS: dict[str, tuple[Callable[[Servers, str, argparse.Namespace], dict], set[str]]] = {
    # name: (function, servers it applies to)
    "sequential": (sequential, {"cogd", "reference", "floor"}),
    "async16": (async16, {"cogd", "reference", "floor"}),
    "yields_1000": (yields_1000, {"cogd", "reference"}),
    "yields_100k": (yields_100k, {"cogd", "reference"}),
    "big_payloads": (big_outputs, {"cogd", "reference"}),
    "uploads": (uploads, {"cogd", "reference", "floor"}),
    "validation": (validation, {"cogd", "reference"}),
    # cogd alone: its own model without and with @cog.batch (no other has it).
    "batching": (batching, {"cogd"}),
    # Only cogd consumes a Redis Streams queue.
    "queue": (queue, {"cogd"}),
}

# What each figure is held to: (how to read the cogd/reference ratio, target).
TARGETS = {
    ("sequential", "succeeded_per_s"): ("higher", ">= 3x"),
    ("sequential", "p99_ms"): ("lower", "<= 1/3"),
    ("sequential", "answers_409"): ("lower", "0"),
    ("sequential", "startup_s"): ("lower", "<= 1x"),
    ("sequential", "parent_rss_mib"): ("lower", "<= 1/3"),
    ("sequential", "temp_bytes_left"): ("lower", "0"),
    ("async16", "succeeded_per_s"): ("higher", ">= 3x"),
    ("async16", "p99_ms"): ("lower", "<= 1/3"),
    ("async16", "answers_409"): ("lower", "0"),
    ("yields_1000", "total_ms"): ("lower", "<= 1/4"),
    ("yields_1000", "sse_first_chunk_ms"): ("lower", "<= 0.5 ms"),
    ("yields_1000", "webhooks_sent"): ("lower", "coalesced"),
    ("big_payloads", "string_20mib_ms"): ("lower", "<= 1/3"),
    ("big_payloads", "file_20mib_inline_ms"): ("lower", "<= 1/3"),
    # The model's own write and the receiver's read are most of it: see
    # upload_floor. The floor alone is over half the reference's time.
    ("uploads", "file_20mib_upload_ms"): ("lower", "~ floor"),
    ("batching", "throughput_ratio"): ("higher", ">= 8x"),
    ("batching", "lone_added_wait_ms"): ("lower", "<= max_wait_ms + 1"),
    ("queue", "scale_4_over_1"): ("higher", ">= 3.5"),
    ("queue", "xadd_to_start_p50_ms"): ("lower", "<= 2 ms"),
}


# ---------------------------------------------------------------------------
# The run and the table


def run_all(args: argparse.Namespace) -> dict:
    names = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"bench: unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    ensure_tools()
    reference = ensure_reference() if "reference" in names else None
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cogd-suite-") as scratch:
        servers = Servers(find_cogd(args.cogd), reference, Path(scratch))
        for number in range(args.rounds):
            shift = number % len(names)
            order = names[shift:] + names[:shift]
            this_round: dict = {}
            for scenario in scenarios:
                function, applies = SCENARIOS[scenario]
                for name in order:
                    if name not in applies:
                        continue
                    print(
                        f"round {number + 1}/{args.rounds}: {scenario} on {name}", file=sys.stderr
                    )
                    Conflicts.count = 0
                    try:
                        figures = function(servers, name, args)
                        if Conflicts.count:
                            figures["retried_409s"] = Conflicts.count
                    except (
                        RuntimeError,
                        AssertionError,
                        OSError,
                        subprocess.CalledProcessError,
                        SystemExit,
                    ) as e:
                        figures = {"error": str(e) or type(e).__name__}
                        print(f"  failed: {figures['error']}", file=sys.stderr)
                    this_round.setdefault(scenario, {})[name] = figures
            rounds.append(this_round)
    return {"servers": names, "scenarios": scenarios, "rounds": rounds}


def medians(result: dict) -> dict:
    """{scenario: {server: {figure: median over rounds}}}."""
    out: dict = {}
    for r in result["rounds"]:
        for scenario, by_server in r.items():
            for server, figures in by_server.items():
                for figure, value in figures.items():
                    if isinstance(value, (int, float)):
                        out.setdefault(scenario, {}).setdefault(server, {}).setdefault(
                            figure, []
                        ).append(value)
    return {
        scenario: {
            server: {k: statistics.median(v) for k, v in figures.items()}
            for server, figures in by_server.items()
        }
        for scenario, by_server in out.items()
    }


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(result: dict) -> str:
    med = medians(result)
    rows = [("scenario", "figure", "cogd", "reference", "floor", "cogd/ref", "target")]
    for scenario in result["scenarios"]:
        by_server = med.get(scenario, {})
        figures: list[str] = []
        for server_figures in by_server.values():
            figures += [f for f in server_figures if f not in figures]
        for figure in figures:
            cogd = by_server.get("cogd", {}).get(figure)
            ref = by_server.get("reference", {}).get(figure)
            floor = by_server.get("floor", {}).get(figure)
            ratio = f"{cogd / ref:.2f}x" if cogd is not None and ref else "-"
            target = TARGETS.get((scenario, figure), ("", ""))[1]
            rows.append((scenario, figure, fmt(cogd), fmt(ref), fmt(floor), ratio, target))
    errors = [
        f"  round {i + 1} {scenario} on {server}: {figures['error']}"
        for i, r in enumerate(result["rounds"])
        for scenario, by_server in r.items()
        for server, figures in by_server.items()
        if "error" in figures
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if errors:
        lines += ["", "errors:"] + errors
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    result = run_all(args)
    result["medians"] = medians(result)
    out = write_json(args.json, result)
    print(f"medians of {args.rounds} interleaved round(s); ratios are cogd/reference")
    print(table(result))
    print(f"every round: {out}")


if __name__ == "__main__":
    main()
