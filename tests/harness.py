"""Start a real cogd server on a model directory and talk HTTP to it.

Imported by conftest.py and the test modules (pytest puts tests/ on sys.path).
Everything here is plain helpers; the fixtures that own server lifetimes live in
conftest.py.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "tests" / "models"
EXAMPLES = REPO / "examples"

# The server under test is whatever the venv running pytest installed, so the
# tests always exercise the build `make install` (or `make build-dev`) just made.
# COGD_BIN overrides it
# (e.g. to try a release build without reinstalling).
BIN_DIR = Path(sys.executable).parent

# Statuses /health-check may report (SPEC section 3).
HEALTH_STATUSES = {"STARTING", "READY", "BUSY", "SETUP_FAILED", "DEFUNCT", "UNHEALTHY"}

# Variables from the caller's environment that would silently change how the
# server behaves (port, log format, concurrency, temp dir...). Each test sets
# what it needs explicitly instead.
_SCRUBBED_VARS = {
    "PORT",
    "LOG_FORMAT",
    "RUST_LOG",
    "TMPDIR",
    "WEBHOOK_AUTH_TOKEN",
    "KUBERNETES_SERVICE_HOST",
}
_SCRUBBED_PREFIXES = ("COG_", "OTEL_")

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def cogd_executable() -> Path:
    override = os.environ.get("COGD_BIN")
    return Path(override) if override else BIN_DIR / "cogd"


def free_port() -> int:
    # Bind-and-release can race with another process grabbing the port before
    # the server binds it; start_server() retries on "address in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> Any:
    """Poll `predicate` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def in_background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run fn in a daemon thread and return a Future for its result.

    A daemon thread (rather than a ThreadPoolExecutor) so that a failing test
    never blocks on joining a request that is still waiting for a held run.
    """
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - re-raised by .result() in the test
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def parse_timestamp(value: Any) -> datetime:
    """Parse an ISO 8601 timestamp from a response; it must carry a UTC offset."""
    assert isinstance(value, str) and value, f"expected an ISO 8601 timestamp, got {value!r}"
    text = value.replace("Z", "+00:00")
    # Older Pythons only take up to 6 fractional digits; servers may send 9.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = head + "." + rest[: min(digits, 6)].ljust(6, "0") + rest[digits:]
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None, f"timestamp {value!r} has no UTC offset"
    return parsed.astimezone(timezone.utc)


def assert_json_error(resp: requests.Response, status: int) -> dict:
    """The response has this status and a JSON body that says what went wrong
    under `error` (as Cog's runtime answers) and `detail` (as older Cog does),
    the same message; a 422's list of problems is under `detail` alone."""
    assert resp.status_code == status, (
        f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    )
    content_type = resp.headers.get("content-type", "")
    assert content_type.startswith("application/json"), (
        f"expected a JSON error body, got content-type {content_type!r}: {resp.text[:500]}"
    )
    body = resp.json()
    assert isinstance(body, dict) and body.get("detail"), f"no 'detail' in {body!r}"
    if isinstance(body["detail"], list):
        assert status == 422 and "error" not in body, body
    else:
        assert body.get("error") == body["detail"], f"'error' is not 'detail' in {body!r}"
    return body


def log_lines(prediction: Mapping[str, Any]) -> list[str]:
    logs = prediction.get("logs") or ""
    assert isinstance(logs, str), f"logs should be a string, got {logs!r}"
    return logs.splitlines()


class Gate:
    """A file that a held run (or setup) waits for; open() lets it continue."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> None:
        self.path.touch()

    def __str__(self) -> str:
        return str(self.path)


class Server:
    """One running server process plus HTTP helpers bound to its URL."""

    def __init__(
        self,
        proc: subprocess.Popen,
        url: str,
        stdout_path: Path,
        stderr_path: Path,
        name: str,
        files: Iterable[Any],
    ) -> None:
        self.proc = proc
        self.url = url
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.name = name
        self._files = list(files)

    # -- HTTP ---------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def predict(self, input: Mapping[str, Any] | None = None, **kwargs: Any) -> requests.Response:
        """POST /predictions with this input; returns the raw response."""
        return self.post("/predictions", json={"input": dict(input or {})}, **kwargs)

    def predict_ok(self, input: Mapping[str, Any] | None = None, **kwargs: Any) -> dict:
        """POST /predictions, expect a 200, return the prediction."""
        resp = self.predict(input, **kwargs)
        assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:1000]}"
        return resp.json()

    def session(self) -> requests.Session:
        """A keep-alive session (requests' own calls open a new connection each)."""
        return requests.Session()

    def health(self) -> dict:
        resp = self.get("/health-check", timeout=5)
        assert resp.status_code == 200, (
            f"/health-check answered {resp.status_code}: {resp.text[:500]}"
        )
        body = resp.json()
        assert body.get("status") in HEALTH_STATUSES, f"unknown health status in {body!r}"
        return body

    def wait_for_status(self, *statuses: str, timeout: float = 30.0) -> dict:
        """Poll /health-check until its status is one of `statuses`; return the body."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode} while waiting for "
                    f"{statuses}; last health: {last!r}"
                )
            try:
                last = self.health()
            except requests.RequestException as exc:
                last = repr(exc)
            else:
                if last["status"] in statuses:
                    return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"health never reached {statuses} within {timeout}s; last: {last!r}"
                )
            time.sleep(0.02)

    # -- process ------------------------------------------------------------

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait for the process to exit and return its exit code."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running {timeout}s later") from None

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Stop the server (politely, then not) and anything it left behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        # The server runs in its own process group (start_new_session), so this
        # reaches a worker or a model's subprocess that outlived it, and only those.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for f in self._files:
            f.close()

    # -- output -------------------------------------------------------------

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def output_tail(self, lines: int = 80) -> str:
        parts = []
        for label, path in (("stderr", self.stderr_path), ("stdout", self.stdout_path)):
            text = path.read_text(errors="replace") if path.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {label} ({path}), last {lines} lines ---\n{tail}")
        return "\n".join(parts)


def server_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _SCRUBBED_VARS and not k.startswith(_SCRUBBED_PREFIXES)
    }
    # As if the venv were activated, so a worker started as "python" is the
    # venv's interpreter, the one that has cog and cogd installed.
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def launch(
    model_dir: Path,
    log_dir: Path,
    name: str,
    *,
    env: Mapping[str, str] | None = None,
    args: Iterable[str] = (),
    launcher: str = "cogd",
    port_via: str = "flag",
    cwd: Path | None = None,
) -> Server:
    """Start a server and return once /health-check answers (any state).

    launcher "cogd":  `cogd serve MODEL_DIR --host 127.0.0.1 [--port N]`, run
                      from `cwd` (default: the log dir, so nothing depends on
                      being run from the model dir).
    launcher "cog":   `python -m cog.server.http --host 127.0.0.1`, the
                      compatibility entry point, run from the model dir with
                      the port in $PORT, as Cog-built images start it.
    launcher "cog-redis-queue": `python -m cog.server.redis_queue ARGS`, Cog's
                      Redis worker launcher, the same way.
    port_via:         "flag" (--port N) or "env" (PORT=N); "cog" always uses env.
    """
    if launcher == "cogd":
        exe = cogd_executable()
        if not exe.exists():
            raise AssertionError(
                f"no cogd executable at {exe}: run `make install`, or set COGD_BIN"
            )
        base_cmd = [str(exe), "serve", str(model_dir), "--host", "127.0.0.1"]
        run_dir = cwd or log_dir
    elif launcher == "cog":
        base_cmd = [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]
        run_dir = cwd or model_dir
        port_via = "env"
    elif launcher == "cog-redis-queue":
        # Cog's Redis worker launcher; its settings come in `args`.
        base_cmd = [sys.executable, "-m", "cog.server.redis_queue"]
        run_dir = cwd or model_dir
        port_via = "env"
    else:
        raise ValueError(f"unknown launcher {launcher!r}")

    last_error = ""
    for attempt in range(3):
        port = free_port()
        cmd = list(base_cmd)
        proc_env = server_env(env)
        if port_via == "env":
            proc_env["PORT"] = str(port)
        else:
            cmd += ["--port", str(port)]
        cmd += list(args)

        stdout_path = log_dir / f"{name}.stdout.log"
        stderr_path = log_dir / f"{name}.stderr.log"
        stdout = stdout_path.open("wb")
        stderr = stderr_path.open("wb")
        proc = subprocess.Popen(
            cmd,
            cwd=run_dir,
            env=proc_env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            # Own process group: teardown can reap the worker too, and a
            # Ctrl-C aimed at pytest does not race the test's own shutdown.
            start_new_session=True,
        )
        server = Server(
            proc, f"http://127.0.0.1:{port}", stdout_path, stderr_path, name, [stdout, stderr]
        )

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                requests.get(server.url + "/health-check", timeout=1)
            except requests.RequestException:
                time.sleep(0.05)
            else:
                return server

        if proc.poll() is None:
            server.close()
            raise AssertionError(
                f"{' '.join(cmd)}: /health-check did not answer within "
                f"{STARTUP_TIMEOUT_S}s\n{server.output_tail()}"
            )
        server.close()
        last_error = server.output_tail()
        if "in use" not in last_error.lower() or attempt == 2:
            break
    raise AssertionError(
        f"{' '.join(cmd)} exited with {proc.returncode} before serving\n{last_error}"
    )


# -- predictions by id ---------------------------------------------------------

TERMINAL_STATUSES = {"succeeded", "failed", "canceled"}


def get_prediction(server: Server, prediction_id: str) -> dict:
    """GET /predictions/{id}, expect a 200, return the prediction."""
    resp = server.get(f"/predictions/{prediction_id}", timeout=5)
    assert resp.status_code == 200, f"GET {prediction_id}: {resp.status_code}: {resp.text[:500]}"
    return resp.json()


def wait_for_prediction(
    server: Server, prediction_id: str, *statuses: str, timeout: float = 30.0
) -> dict:
    """Poll GET /predictions/{id} until its status is one of `statuses`
    (default: any terminal one) and return it."""
    wanted = set(statuses or TERMINAL_STATUSES)
    last: dict = {}

    def reached() -> bool:
        nonlocal last
        last = get_prediction(server, prediction_id)
        return last["status"] in wanted

    try:
        wait_until(reached, timeout, f"prediction {prediction_id} to be {sorted(wanted)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last: {last!r}") from None
    return last


def start_async(server: Server, path: str = "/predictions", **body: Any) -> dict:
    """Create a prediction with `Prefer: respond-async` (POST, or PUT when
    `path` names an id); expect a 202 and return the prediction."""
    method = "PUT" if path != "/predictions" else "POST"
    resp = server.request(method, path, json=body, headers={"Prefer": "respond-async"})
    assert resp.status_code == 202, f"{method} {path}: {resp.status_code}: {resp.text[:500]}"
    return resp.json()


def count_slots(server: Server, gate: Gate, limit: int = 8) -> int:
    """How many predictions the server runs at once.

    Starts predictions that wait on `gate` (the model's input `gate`) with
    respond-async until one is refused with 409; health must say BUSY then.
    Opens the gate and waits for the held ones to succeed before returning.
    """
    held: list[str] = []
    for _ in range(limit + 1):
        resp = server.post(
            "/predictions",
            json={"input": {"gate": str(gate)}},
            headers={"Prefer": "respond-async"},
        )
        if resp.status_code == 409:
            break
        assert resp.status_code == 202, f"{resp.status_code}: {resp.text[:500]}"
        held.append(resp.json()["id"])
    else:
        gate.open()
        raise AssertionError(f"more than {limit} predictions ran at once")
    try:
        assert server.health()["status"] == "BUSY"
    finally:
        gate.open()
    for prediction_id in held:
        done = wait_for_prediction(server, prediction_id)
        assert done["status"] == "succeeded", done
    return len(held)


def send_and_hang_up(
    server: Server,
    method: str,
    path: str,
    body: Any,
    headers: Mapping[str, str] | None = None,
) -> socket.socket:
    """Send one JSON request on a raw socket and return the socket, unread.

    The caller closes it to play a client that goes away before the reply.
    """
    payload = json.dumps(body).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        + "\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def proc_status_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of process `pid` from /proc (VmRSS, VmHWM, ...) in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def serve_loopback(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """Serves `handler` on 127.0.0.1 (a free port) from a daemon thread;
    returns the server (shut it down when done) and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


# -- webhook receiver ------------------------------------------------------------


class WebhookCall:
    """One request the receiver got: what came in and what it answered."""

    def __init__(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: Any,
        received_at: float,
    ) -> None:
        self.method = method
        self.path = path
        # Header names lower-cased; repeated headers joined with ", ".
        self.headers = dict(headers)
        self.body = body
        # time.monotonic() when the request had been read.
        self.received_at = received_at
        self.answered = 0

    @property
    def status(self) -> Any:
        """The prediction status in the body (None when it is not a prediction)."""
        return self.body.get("status") if isinstance(self.body, dict) else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def __repr__(self) -> str:
        body = (
            self.body
            if not isinstance(self.body, dict)
            else {k: self.body.get(k) for k in ("id", "status", "output")}
        )
        return f"<{self.method} {self.path} -> {self.answered} {body!r}>"


def fail_first(
    n: int, status: int = 500, matching: Callable[[WebhookCall], bool] = lambda call: True
) -> Callable[[WebhookCall], int]:
    """A receiver responder: answer `status` to the first n matching calls, then 200."""
    seen = 0
    lock = threading.Lock()

    def respond(call: WebhookCall) -> int:
        nonlocal seen
        if not matching(call):
            return 200
        with lock:
            seen += 1
            return status if seen <= n else 200

    return respond


class WebhookReceiver:
    """A threaded HTTP server on 127.0.0.1 that records every request.

    `respond` (call -> status code) decides each answer; the default is 200.
    """

    def __init__(self) -> None:
        self.calls: list[WebhookCall] = []
        self.respond: Callable[[WebhookCall], int] = lambda call: 200
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                headers: dict[str, str] = {}
                for name, value in self.headers.items():
                    key = name.lower()
                    headers[key] = f"{headers[key]}, {value}" if key in headers else value
                call = WebhookCall(self.command, self.path, headers, body, time.monotonic())
                call.answered = receiver.respond(call)
                with receiver._cond:
                    receiver.calls.append(call)
                    receiver._cond.notify_all()
                reply = b"{}"
                self.send_response(call.answered)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_POST = _handle  # noqa: N815 - http.server's naming
            do_PUT = _handle  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server, self.base_url = serve_loopback(Handler)

    def url(self, path: str = "/webhook") -> str:
        return self.base_url + path

    def calls_to(self, path: str) -> list[WebhookCall]:
        with self._cond:
            return [c for c in self.calls if c.path == path]

    def wait_for(
        self,
        predicate: Callable[[list[WebhookCall]], Any],
        timeout: float = 15.0,
        what: str = "webhooks",
    ) -> list[WebhookCall]:
        """Wait until predicate(calls so far) is truthy; return the calls."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.calls)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; got {self.calls!r}"
                    )
                self._cond.wait(left)
            return list(self.calls)

    def wait_for_completed(
        self, path: str = "/webhook", timeout: float = 15.0
    ) -> list[WebhookCall]:
        """Wait for a 2xx-answered call with a terminal status to `path`;
        return every call to `path` so far."""
        self.wait_for(
            lambda calls: any(
                c.path == path and c.is_terminal and 200 <= c.answered < 300 for c in calls
            ),
            timeout,
            f"a completed webhook to {path}",
        )
        return self.calls_to(path)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class OtlpCollector:
    """A stand-in OpenTelemetry collector on 127.0.0.1: accepts OTLP/HTTP
    protobuf exports at POST /v1/traces and keeps every span it is sent.

    `spans` holds (resource attributes, span) pairs, the spans being
    `opentelemetry.proto.trace.v1.trace_pb2.Span` messages.
    """

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.paths: list[str] = []
        self._cond = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(length))
                with collector._cond:
                    collector.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        resource = {
                            a.key: a.value.string_value for a in resource_spans.resource.attributes
                        }
                        for scope_spans in resource_spans.scope_spans:
                            collector.spans.extend((resource, s) for s in scope_spans.spans)
                    collector._cond.notify_all()
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server, self.endpoint = serve_loopback(Handler)

    def wait_for_spans(
        self, predicate: Callable[[list[Any]], Any], timeout: float = 15.0
    ) -> list[Any]:
        """Wait until predicate(spans so far) is truthy; return the spans."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate([span for _, span in self.spans]):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [span.name for _, span in self.spans]
                    raise AssertionError(f"timed out after {timeout}s; spans so far: {names}")
                self._cond.wait(left)
            return [span for _, span in self.spans]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- file uploads -----------------------------------------------------------------


class Upload:
    """One PUT the upload receiver took: its path, media type, size, digest,
    and (for small ones) its body."""

    def __init__(self, path: str, content_type: str, size: int, sha256: str, body: bytes) -> None:
        self.path = path
        self.content_type = content_type
        self.size = size
        self.sha256 = sha256
        self.body = body

    def __repr__(self) -> str:
        return f"Upload({self.path!r}, {self.content_type!r}, {self.size} bytes)"


class UploadReceiver:
    """A threaded HTTP server on 127.0.0.1 that takes PUTs as `--upload-url`
    uploads do, and records each one it accepted.

    `location(path)` gives the `Location` header of the reply (None: no
    header); `fail_first(n)` answers the next n PUTs with `status` (503);
    `respond(path)` may return a status to answer instead of 201 (after
    reading the body); `on_upload(upload)` runs before the reply is sent.
    Bodies are read as they arrive (length and SHA-256 kept, bytes kept up to
    1 MiB), so a large upload does not sit in the test's memory.
    """

    KEEP_BODY = 1024 * 1024

    def __init__(self) -> None:
        self.uploads: list[Upload] = []
        self.attempts = 0
        self.location: Callable[[str], str | None] = lambda path: None
        self.respond: Callable[[str], int | None] = lambda path: None
        self.on_upload: Callable[[Upload], None] = lambda upload: None
        self._failures = 0
        self._failure_status = 503
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _chunks(self) -> Iterable[bytes]:
                length = self.headers.get("Content-Length")
                if length is not None:
                    left = int(length)
                    while left:
                        chunk = self.rfile.read(min(left, 1 << 20))
                        if not chunk:
                            return
                        left -= len(chunk)
                        yield chunk
                    return
                # Transfer-Encoding: chunked
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return
                    yield self.rfile.read(size)
                    self.rfile.readline()

            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                digest = hashlib.sha256()
                size = 0
                kept = bytearray()
                for chunk in self._chunks():
                    digest.update(chunk)
                    size += len(chunk)
                    if len(kept) < receiver.KEEP_BODY:
                        kept += chunk[: receiver.KEEP_BODY - len(kept)]
                with receiver._cond:
                    receiver.attempts += 1
                    failing = receiver._failures > 0
                    if failing:
                        receiver._failures -= 1
                status = receiver._failure_status if failing else receiver.respond(self.path)
                if status is not None and status >= 300:
                    self._reply(status, None)
                    return
                upload = Upload(
                    self.path,
                    self.headers.get("Content-Type", ""),
                    size,
                    digest.hexdigest(),
                    bytes(kept),
                )
                receiver.on_upload(upload)
                with receiver._cond:
                    receiver.uploads.append(upload)
                    receiver._cond.notify_all()
                self._reply(status or 201, receiver.location(self.path))

            def _reply(self, status: int, location: str | None) -> None:
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server, self.base_url = serve_loopback(Handler)

    def url(self, path: str = "/uploads") -> str:
        return self.base_url + path

    def fail_first(self, count: int, status: int = 503) -> None:
        """Answer the next `count` PUTs with `status` (without keeping them)."""
        with self._cond:
            self._failures = count
            self._failure_status = status

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- server-sent events ----------------------------------------------------------


class SseEvent:
    """One server-sent event as it arrived."""

    def __init__(self, name: str, data: str, received_at: float) -> None:
        self.name = name
        # The event's data lines joined with "\n", as the SSE standard says.
        self.data = data
        # time.monotonic() when the blank line that ends the event was read.
        self.received_at = received_at

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 200 else self.data[:200] + "..."
        return f"<{self.name} {data}>"


class _SmallWindowConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket takes in at most `rcvbuf` bytes unread."""

    def __init__(self, host: str, port: int, rcvbuf: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.rcvbuf = rcvbuf

    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect(), so the advertised window is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock


class SseStream:
    """A request sent with `Accept: text/event-stream`, its reply parsed as
    server-sent events by a background thread that records every event with
    its arrival time, until the server ends the stream.

    getresponse() has returned when the constructor does, so the server has
    answered (and, for a stream, attached this reader) by then. A reply that
    is not a stream (e.g. 406) is read whole into `body`.

    With read=False nothing past the response head is read until resume():
    a stalled reader. `rcvbuf` makes its socket's receive buffer small, so the
    server soon cannot write to it.
    """

    def __init__(
        self,
        server: Server,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        read: bool = True,
        rcvbuf: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        if rcvbuf is None:
            self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        else:
            self.conn = _SmallWindowConnection(host, int(port), rcvbuf, timeout)
        payload = json.dumps(body if body is not None else {}).encode()
        self.conn.request(
            method,
            path,
            payload,
            {
                "Accept": "text/event-stream",
                "Content-Type": "application/json",
                **(headers or {}),
            },
        )
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}
        self.body = b""
        self.events: list[SseEvent] = []
        # Comment lines (keep-alives), without the leading ":".
        self.comments: list[str] = []
        # time.monotonic() when the server ended the stream; None while open.
        self.ended_at: float | None = None
        # What stopped the reader other than the end of the stream.
        self.failure: BaseException | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if not self.is_stream:
            self.body = self.response.read()
            self._finish()
        elif read:
            self.resume()

    @property
    def is_stream(self) -> bool:
        content_type = self.headers.get("content-type", "")
        return self.status == 200 and content_type.startswith("text/event-stream")

    def resume(self) -> None:
        """Start reading (once)."""
        if self._thread is None and self.ended_at is None:
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _finish(self, failure: BaseException | None = None) -> None:
        with self._cond:
            self.failure = failure
            self.ended_at = time.monotonic()
            self._cond.notify_all()

    def _read(self) -> None:
        name, data = "", []
        try:
            while True:
                raw = self.response.readline()
                if not raw:
                    break
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        event = SseEvent(name or "message", "\n".join(data), time.monotonic())
                        with self._cond:
                            self.events.append(event)
                            self._cond.notify_all()
                    name, data = "", []
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "":
                    with self._cond:
                        self.comments.append(value)
                elif field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
        except BaseException as exc:  # noqa: BLE001 - reported by wait_*()
            self._finish(exc)
        else:
            self._finish()

    def names(self) -> list[str]:
        with self._cond:
            return [e.name for e in self.events]

    def wait_for(
        self,
        predicate: Callable[[list[SseEvent]], Any],
        timeout: float = 15.0,
        what: str = "events",
    ) -> list[SseEvent]:
        """Wait until predicate(events so far) is truthy; return the events."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.events)):
                left = deadline - time.monotonic()
                if self.ended_at is not None or left <= 0:
                    why = "the stream ended" if self.ended_at is not None else "timed out"
                    raise AssertionError(
                        f"{why} waiting for {what} (failure: {self.failure!r}); got {self.events!r}"
                    )
                self._cond.wait(left)
            return list(self.events)

    def wait_for_event(self, name: str, count: int = 1, timeout: float = 15.0) -> list[SseEvent]:
        """Wait for `count` events called `name`; return all the events so far."""
        return self.wait_for(
            lambda events: sum(e.name == name for e in events) >= count,
            timeout,
            f"{count} {name!r} event(s)",
        )

    def wait_ended(self, timeout: float = 15.0) -> list[SseEvent]:
        """Wait until the server ends the stream; return every event."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.ended_at is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the stream was still open {timeout}s later; got {self.events!r}"
                    )
                self._cond.wait(left)
            if self.failure is not None:
                raise AssertionError(
                    f"reading the stream failed: {self.failure!r}; got {self.events!r}"
                )
            return list(self.events)

    def close(self) -> None:
        self.conn.close()


def output_events(events: Iterable[SseEvent]) -> list[SseEvent]:
    return [e for e in events if e.name == "output"]


def output_chunks(events: Iterable[SseEvent]) -> list[Any]:
    """The `chunk` of every `output` event, in arrival order."""
    return [e.json["chunk"] for e in output_events(events)]


def output_indexes(events: Iterable[SseEvent]) -> list[int]:
    return [e.json["index"] for e in output_events(events)]


# -- Redis, for the scale-out tests ------------------------------------------


class RedisServer:
    """A real `redis-server` on a free loopback port with its own data dir.

    `persist=True` turns the append-only file on, so the data survives
    `restart()`; otherwise nothing is written to disk. `stop()` ends it.
    """

    def __init__(self, data_dir: Path, *, persist: bool = False) -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.persist = persist
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        cmd = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--appendfsync",
            "always",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        client = self.client()
        wait_until(lambda: _pings(client), 10, f"redis-server on port {self.port}", 0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
