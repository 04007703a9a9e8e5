"""Kubernetes probes and the prediction time limit: /livez answers 200 while
the process runs; /readyz answers 503 during setup and 200 once the model is
ready (both open even with COG_API_TOKEN); a run longer than
COG_PREDICT_TIMEOUT is stopped and fails with a message saying so, and the
model keeps serving; one that does not stop is replaced with its worker, which
never counts against the restart budget.
"""

import time


def test_readyz_is_503_during_setup_and_200_after(start_server, gate):
    server = start_server("slow_setup", ready=False, env={"SETUP_GATE": str(gate)})
    assert server.get("/livez").status_code == 200
    resp = server.get("/readyz")
    assert resp.status_code == 503 and resp.json()["status"] == "STARTING", resp.text
    gate.open()
    server.wait_for_status("READY", timeout=30)
    resp = server.get("/readyz")
    assert resp.status_code == 200 and resp.json()["status"] == "READY", resp.text


def test_probes_stay_open_when_a_token_is_required(start_server):
    server = start_server("echo", env={"COG_API_TOKEN": "tok-probe"})
    assert server.get("/livez").status_code == 200
    assert server.get("/readyz").status_code == 200
    assert server.predict({"text": "x"}).status_code == 401


def test_a_run_past_the_time_limit_fails_and_the_model_keeps_serving(start_server):
    server = start_server("basic", env={"COG_PREDICT_TIMEOUT": "0.5"})
    began = time.monotonic()
    prediction = server.predict_ok({"mode": "ok", "token": "slow", "seconds": 30})
    assert time.monotonic() - began < 5
    assert prediction["status"] == "failed", prediction
    assert "COG_PREDICT_TIMEOUT" in prediction["error"], prediction["error"]
    quick = server.predict_ok({"mode": "ok", "token": "quick"})
    assert quick["status"] == "succeeded", quick


def test_a_run_deaf_past_the_time_limit_is_replaced_without_spending_the_restart_budget(
    start_server, tmp_path
):
    env = {
        "COG_PREDICT_TIMEOUT": "0.5",
        "COG_CANCEL_GRACE": "0.2",
        "COG_MAX_WORKER_RESTARTS": "1",
    }
    server = start_server("cancellable", env=env)
    for _ in range(3):
        # Stuck where the time limit's cancel cannot reach it.
        deaf = {"mode": "deaf", "release": str(tmp_path / "never")}
        prediction = server.predict_ok(deaf, timeout=10)
        assert prediction["status"] == "failed", prediction
        assert "COG_PREDICT_TIMEOUT" in prediction["error"], prediction["error"]
        # The worker is replaced, which is no crash: the budget of one
        # restart is never used up.
        server.wait_for_status("READY", timeout=30)
    assert server.predict_ok({"mode": "ok", "token": "after"})["output"] == "ok:after"
