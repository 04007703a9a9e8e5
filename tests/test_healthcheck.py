"""The model's own `healthcheck()` (SPEC §3, §4): when the model defines one
(sync or async), `GET /health-check` runs it in the worker while the model is
READY or BUSY. True keeps the real status, and so does any other value that is
not False (a check that forgets its `return`), as in Cog; False, an exception,
or no answer within COG_HEALTHCHECK_TIMEOUT (default 5 s) report `UNHEALTHY`
with `user_healthcheck_error` in Cog's words (`Healthcheck failed: …`), and
nothing else changes: predictions are still accepted. Concurrent health requests share one
check; it runs beside a prediction in progress, and what it prints never lands
in that prediction's logs. A worker that stops answering (SIGSTOP) is
`UNHEALTHY` within the deadline whether or not the model defines a check.

The model is tests/models/healthcheck: each check appends a line to the
HEALTH_CALLS file and does what the HEALTH_MODE file says (true, false, raise,
none, sleep:N), so a test changes the answer on a running server by writing
that file.
"""

import os
import signal
import time
from pathlib import Path

import pytest
from harness import in_background, log_lines, start_async, wait_for_prediction, wait_until

ASYNC = "predict.py:AsyncPredictor"


class Health:
    """The HEALTH_MODE and HEALTH_CALLS files of one server."""

    def __init__(self, directory: Path) -> None:
        self.mode_file = directory / "health-mode"
        self.calls_file = directory / "health-calls"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HEALTH_MODE": str(self.mode_file),
            "HEALTH_CALLS": str(self.calls_file),
            **extra,
        }

    def set(self, mode: str) -> None:
        self.mode_file.write_text(mode)

    def calls(self) -> int:
        return len(self.calls_file.read_text().splitlines()) if self.calls_file.exists() else 0


@pytest.fixture
def health(tmp_path: Path) -> Health:
    return Health(tmp_path)


def start(start_server, health, predictor="predict.py:Predictor", **env):
    return start_server("healthcheck", env=health.env(COG_PREDICT_TYPE_STUB=predictor, **env))


def check(server):
    """One /health-check: (status, user_healthcheck_error or None)."""
    body = server.health()
    return body["status"], body.get("user_healthcheck_error")


@pytest.mark.parametrize("predictor", ["predict.py:Predictor", ASYNC], ids=["sync", "async"])
def test_a_check_that_returns_true_keeps_the_model_ready_and_runs_each_time(
    start_server, health, predictor
):
    server = start(start_server, health, predictor)
    before = health.calls()
    for _ in range(3):
        assert check(server) == ("READY", None)
    assert health.calls() == before + 3
    assert "user_healthcheck_error" not in server.health()


@pytest.mark.parametrize("predictor", ["predict.py:Predictor", ASYNC], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("false", "Healthcheck failed: user-defined healthcheck returned False"),
        ("raise", "Healthcheck failed: RuntimeError: disk full"),
    ],
    ids=["false", "raise"],
)
def test_a_failing_check_reports_unhealthy_with_the_reason(
    start_server, health, predictor, mode, error
):
    server = start(start_server, health, predictor)
    health.set(mode)
    body = server.health()
    assert body["status"] == "UNHEALTHY", body
    assert body["user_healthcheck_error"] == error
    assert body["setup"]["status"] == "succeeded", "the rest of the body is as usual"

    # Only the report changed: predictions are still accepted, and recovery is immediate.
    assert server.predict_ok()["status"] == "succeeded"
    health.set("true")
    assert check(server) == ("READY", None)


@pytest.mark.parametrize("predictor", ["predict.py:Predictor", ASYNC], ids=["sync", "async"])
def test_a_check_that_returns_none_counts_as_healthy_as_in_cog(start_server, health, predictor):
    # A check that forgets its `return`: Cog takes anything but False as healthy.
    server = start(start_server, health, predictor)
    health.set("none")
    before = health.calls()
    assert check(server) == ("READY", None)
    assert health.calls() == before + 1, "the check ran"


def test_a_raising_check_is_logged_by_the_server(start_server, health):
    server = start(start_server, health)
    health.set("raise")
    assert check(server)[0] == "UNHEALTHY"
    wait_until(
        lambda: "RuntimeError: disk full" in server.stderr_text(), 5, "the traceback in the log"
    )
    assert "healthcheck: about to raise" in server.stderr_text()


@pytest.mark.parametrize("predictor", ["predict.py:Predictor", ASYNC], ids=["sync", "async"])
def test_a_check_that_does_not_return_in_time_is_unhealthy(start_server, health, predictor):
    server = start(start_server, health, predictor, COG_HEALTHCHECK_TIMEOUT="0.5")
    before = health.calls()
    health.set("sleep:2")
    status, error = check(server)
    assert status == "UNHEALTHY"
    assert error == "Healthcheck failed: user-defined healthcheck timed out after 0.5 seconds"
    # The stuck check still runs: the next one is not stacked on it.
    status, error = check(server)
    assert status == "UNHEALTHY"
    assert error.startswith("Healthcheck failed: "), error
    assert "has not returned from an earlier check" in error, error
    assert health.calls() == before + 1
    assert server.predict_ok()["status"] == "succeeded"

    # Once the stuck check has returned, checks run again.
    health.set("true")
    wait_until(lambda: check(server) == ("READY", None), 10, "the model to be healthy again")


def test_concurrent_health_requests_share_one_check(start_server, health):
    server = start(start_server, health)
    health.set("sleep:1")
    before = health.calls()
    requests = [in_background(check, server) for _ in range(6)]
    results = [r.result(timeout=10) for r in requests]
    assert results == [("READY", None)] * 6
    assert health.calls() == before + 1, "six concurrent requests, one call"
    assert check(server) == ("READY", None)
    assert health.calls() == before + 2, "the next request runs a new check"


def test_the_check_runs_beside_a_sync_prediction_in_progress(start_server, health, gate):
    server = start(start_server, health)
    # The run burns CPU in Python on the main thread while it waits for the gate.
    accepted = start_async(server, input={"gate": str(gate), "spin": True})
    wait_until(lambda: server.health()["status"] == "BUSY", 10, "the run to start")

    calls = health.calls()
    assert check(server) == ("BUSY", None)
    health.set("false")
    assert check(server) == (
        "UNHEALTHY",
        "Healthcheck failed: user-defined healthcheck returned False",
    )
    health.set("raise")
    assert check(server)[0] == "UNHEALTHY"
    assert health.calls() >= calls + 3

    gate.open()
    final = wait_for_prediction(server, accepted["id"])
    assert final["status"] == "succeeded", final
    # What the check printed while the run was going is not in the run's logs.
    assert log_lines(final) == ["predict: started", "predict: finished"], final["logs"]


def test_the_check_runs_beside_an_async_prediction_in_progress(start_server, health, gate):
    server = start(start_server, health, ASYNC)
    accepted = start_async(server, input={"gate": str(gate)})
    wait_until(lambda: server.health()["status"] == "BUSY", 10, "the run to start")
    assert check(server) == ("BUSY", None)
    health.set("sleep:0.2")
    assert check(server) == ("BUSY", None)
    gate.open()
    assert wait_for_prediction(server, accepted["id"])["status"] == "succeeded"


def test_a_model_without_a_healthcheck_is_never_unhealthy(start_server):
    server = start_server("basic")
    body = server.health()
    assert body["status"] == "READY", body
    assert "user_healthcheck_error" not in body


def test_the_check_does_not_run_until_setup_has_finished(start_server, health, gate):
    server = start_server("healthcheck", ready=False, env=health.env(SETUP_GATE=str(gate)))
    for _ in range(3):
        assert check(server) == ("STARTING", None)
    assert health.calls() == 0
    gate.open()
    server.wait_for_status("READY", timeout=30)
    assert health.calls() >= 1


def test_a_bad_healthcheck_timeout_stops_start_up(start_server, health):
    with pytest.raises(AssertionError, match="COG_HEALTHCHECK_TIMEOUT"):
        start_server("healthcheck", env=health.env(COG_HEALTHCHECK_TIMEOUT="0"))


def worker_pid(server) -> int:
    """The pid of the server's worker process (its one child)."""

    def children():
        pids = set()
        for task in os.listdir(f"/proc/{server.proc.pid}/task"):
            with open(f"/proc/{server.proc.pid}/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        return pids

    pids = wait_until(children, 10, "the worker process")
    assert len(pids) == 1, pids
    return pids.pop()


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (state ``T``)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state != "T":
            return False
    return True


@pytest.mark.parametrize("model", ["basic", "healthcheck"])
def test_a_worker_that_stops_answering_is_unhealthy_within_the_deadline(
    start_server, health, model
):
    # With or without a healthcheck() of the model's own, a worker that no
    # longer answers (stopped, or wedged) is not READY.
    server = start_server(model, env=health.env(COG_HEALTHCHECK_TIMEOUT="1"))
    assert check(server) == ("READY", None)
    worker = worker_pid(server)
    os.kill(worker, signal.SIGSTOP)
    try:
        # A stop is delivered asynchronously: check once every thread is stopped.
        wait_until(lambda: all_threads_stopped(worker), 10, "the worker to stop")
        t0 = time.monotonic()
        status, error = check(server)
        elapsed = time.monotonic() - t0
        assert status == "UNHEALTHY", (status, error)
        assert error.startswith("Healthcheck failed: "), error
        assert "within 1.0 seconds" in error or "timed out after 1.0 seconds" in error, error
        assert elapsed < 3, elapsed
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: check(server) == ("READY", None), 10, "the model to be healthy again")
    assert server.predict_ok()["status"] == "succeeded"
    assert worker_pid(server) == worker
