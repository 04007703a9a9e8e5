"""Start a real cogd server on a model directory and talk HTTP to it.

Imported by conftest.py and the test modules (pytest puts tests/ on sys.path).
Everything here is plain helpers; the fixtures that own server lifetimes live in
conftest.py.
"""

from __future__ import annotations

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
_SCRUBBED_PREFIXES = ("COG_",)

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
    """The response has this status and a JSON body with a `detail`."""
    assert resp.status_code == status, (
        f"expected {status}, got {resp.status_code}: {resp.text[:500]}"
    )
    content_type = resp.headers.get("content-type", "")
    assert content_type.startswith("application/json"), (
        f"expected a JSON error body, got content-type {content_type!r}: {resp.text[:500]}"
    )
    body = resp.json()
    assert isinstance(body, dict) and body.get("detail"), f"no 'detail' in {body!r}"
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
