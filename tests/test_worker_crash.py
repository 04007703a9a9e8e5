"""The Python worker dying mid-run (os._exit, segfault): the in-flight request
comes back promptly as failed, the HTTP server stays up, health goes DEFUNCT
and new predictions get 503.
"""

import time

import pytest
from harness import assert_json_error


@pytest.mark.parametrize("mode", ["exit", "segfault"])
def test_worker_crash_fails_inflight_prediction_and_marks_defunct(start_server, mode):
    server = start_server("basic")

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
