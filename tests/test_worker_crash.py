"""The Python worker dying mid-run (os._exit, segfault): the in-flight request
comes back promptly as failed and the HTTP server stays up. The worker is
restarted, set up again and serves; once the restarts allowed
(COG_MAX_WORKER_RESTARTS within a window) are used up, health goes DEFUNCT and
new predictions get 503. Predictions still waiting in the queue when the
worker dies are not failed: they run on its successor.
"""

import time

import pytest
from harness import assert_json_error, start_async, wait_for_prediction


@pytest.mark.parametrize("mode", ["exit", "segfault"])
def test_worker_crash_fails_inflight_prediction_and_marks_defunct(start_server, mode):
    server = start_server("basic", env={"COG_MAX_WORKER_RESTARTS": "0"})

    began = time.monotonic()
    # The timeout is the "promptly": a server that only notices the dead
    # worker much later makes this raise instead of returning.
    prediction = server.predict_ok({"mode": mode, "token": "crash"}, timeout=10)
    elapsed = time.monotonic() - began
    assert elapsed < 10, elapsed
    assert prediction["status"] == "failed", prediction
    assert "worker" in (prediction["error"] or "").lower(), prediction["error"]
    assert prediction["completed_at"] is not None, prediction

    server.wait_for_status("DEFUNCT", timeout=10)
    assert_json_error(server.predict({"mode": "ok"}), 503)
    assert_json_error(server.put("/predictions/after-crash", json={"input": {}}), 503)
    # The parent is untouched by the worker's death.
    assert server.proc.poll() is None
    assert server.health()["status"] == "DEFUNCT"


@pytest.mark.parametrize("mode", ["exit", "segfault"])
def test_a_crashed_worker_is_restarted_and_serves_again(start_server, mode):
    server = start_server("basic")
    prediction = server.predict_ok({"mode": mode, "token": "crash"}, timeout=10)
    assert prediction["status"] == "failed", prediction
    assert "worker" in prediction["error"].lower(), prediction["error"]

    # Setup runs again on the new worker; meanwhile the model is not ready.
    server.wait_for_status("READY", timeout=30)
    assert server.health()["setup"]["status"] == "succeeded"
    after = server.predict_ok({"mode": "ok", "token": "after"})
    assert after["status"] == "succeeded" and after["output"] == "ok:after", after
    assert server.proc.poll() is None


def test_restarts_give_up_into_defunct_after_the_allowed_number(start_server):
    server = start_server("basic", env={"COG_MAX_WORKER_RESTARTS": "1"})
    first = server.predict_ok({"mode": "exit", "token": "one"}, timeout=10)
    assert first["status"] == "failed", first
    server.wait_for_status("READY", timeout=30)
    second = server.predict_ok({"mode": "exit", "token": "two"}, timeout=10)
    assert second["status"] == "failed", second
    server.wait_for_status("DEFUNCT", timeout=10)
    assert_json_error(server.predict({"mode": "ok"}), 503)


def test_predictions_waiting_when_the_worker_dies_run_on_its_successor(start_server, gate):
    server = start_server("basic", env={"COG_QUEUE_SIZE": "2"})
    start_async(server, "/predictions/crash", input={"mode": "exit", "gate": str(gate)})
    for i in range(2):
        queued = start_async(server, f"/predictions/wait-{i}", input={"token": f"wait-{i}"})
        assert queued["status"] == "starting", queued
    gate.open()

    crashed = wait_for_prediction(server, "crash", timeout=10)
    assert crashed["status"] == "failed", crashed
    for i in range(2):
        done = wait_for_prediction(server, f"wait-{i}", timeout=30)
        assert done["status"] == "succeeded", done
        assert done["output"] == f"ok:wait-{i}", done
    assert server.health()["status"] == "READY"
