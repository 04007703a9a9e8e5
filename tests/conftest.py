"""Fixtures that start real cogd servers for a test and clean up after it.

Every test gets its own servers on their own ports, so the suite runs in
parallel under pytest-xdist. When a test fails, the tail of each of its
servers' stderr/stdout is attached to the failure report (full logs stay in the
test's tmp_path).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    MODELS,
    Gate,
    OtlpCollector,
    RedisServer,
    Server,
    UploadReceiver,
    WebhookReceiver,
    launch,
)

_SERVERS = pytest.StashKey[list]()


def make_short_tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="cgt", dir="/tmp"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            report.sections.append((f"server {server.name} output", server.output_tail()))
    return report


@pytest.fixture
def start_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Factory: start_server(model, *, ready=True, env=None, args=(), launcher="cogd",
    port_via="flag", cwd=None) -> Server.

    `model` is a directory name under tests/models or a Path. With ready=True it
    returns once health says READY; with ready=False as soon as /health-check
    answers at all (for tests that look at STARTING or SETUP_FAILED).
    """
    servers: list[Server] = request.node.stash.setdefault(_SERVERS, [])
    counter = itertools.count()
    tmpdirs: list[Path] = []

    def start(
        model: str | Path,
        *,
        ready: bool = True,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        launcher: str = "cogd",
        port_via: str = "flag",
        cwd: Path | None = None,
    ) -> Server:
        model_dir = model if isinstance(model, Path) else MODELS / model
        assert model_dir.is_dir(), f"no model directory {model_dir}"
        name = f"{model_dir.name}-{next(counter)}"
        env = dict(env or {})
        if "TMPDIR" not in env:
            # Each server gets its own temp dir, removed after the test, so a
            # server killed at teardown leaves nothing behind in /tmp.
            env["TMPDIR"] = str(make_short_tmpdir())
            tmpdirs.append(Path(env["TMPDIR"]))
        server = launch(
            model_dir,
            tmp_path,
            name,
            env=env,
            args=args,
            launcher=launcher,
            port_via=port_via,
            cwd=cwd,
        )
        servers.append(server)
        if ready:
            server.wait_for_status("READY", timeout=60)
        return server

    yield start
    for server in servers:
        server.close()
    for path in tmpdirs:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    """A gate file for a held run; opened at teardown so no worker waits on it."""
    g = Gate(tmp_path / "gate")
    yield g
    g.open()


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A temp dir with a short path, to hand to a server as $TMPDIR.

    pytest's tmp_path is long, and a server that puts Unix sockets under
    $TMPDIR could hit the ~108-byte socket path limit, failing for reasons
    that have nothing to do with what the test checks.
    """
    path = make_short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """Factory: redis_server(persist=False) -> RedisServer, a real redis-server
    on a free loopback port with its own data dir, stopped after the test."""
    started: list[RedisServer] = []

    def start(*, persist: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", persist=persist)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A local HTTP server that records the webhooks sent to it (see harness)."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def otlp_collector() -> Iterator[OtlpCollector]:
    """A local OTLP/HTTP endpoint that keeps the spans exported to it (see harness)."""
    collector = OtlpCollector()
    yield collector
    collector.close()


@pytest.fixture
def upload_receiver() -> Iterator[UploadReceiver]:
    """A local HTTP server that takes file-output uploads (see harness)."""
    receiver = UploadReceiver()
    yield receiver
    receiver.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Shows what tests measured with `record_property` (the playground's
    weight and time to a usable form), which a parallel run would hide."""
    lines = [
        f"{name}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
    ]
    if lines:
        terminalreporter.write_sep("-", "measured")
        for line in lines:
            terminalreporter.write_line(line)
