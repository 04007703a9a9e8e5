"""COG_QUEUE_SIZE=N lets up to N predictions wait for a busy slot: they run in
arrival order, the one after them gets 429 with a Retry-After header, and a
queued prediction cancelled before it starts never runs and ends `canceled`.
Without it (the default) a busy server answers 409.
"""

from harness import (
    assert_json_error,
    get_prediction,
    in_background,
    start_async,
    wait_for_prediction,
    wait_until,
)


def runs_started(runlog):
    return runlog.read_text().splitlines() if runlog.exists() else []


def test_queued_predictions_run_in_arrival_order_and_the_overflow_gets_429(
    start_server, gate, tmp_path
):
    server = start_server("cancellable", env={"COG_QUEUE_SIZE": "2"})
    runlog = tmp_path / "runlog"

    def body(token, **extra):
        return {"input": {"mode": "ok", "token": token, "runlog": str(runlog), **extra}}

    def put(prediction_id, payload):
        return server.put(f"/predictions/{prediction_id}", json=payload, timeout=60)

    # One runs (held on the gate), then two arrive one after the other and wait.
    first = in_background(put, "q-run", body("q-run", gate=str(gate)))
    wait_until(lambda: runs_started(runlog) == ["q-run"], 10, "the first run to start")
    second = in_background(put, "q-wait-1", body("q-wait-1"))
    wait_until(lambda: server.get("/predictions/q-wait-1").status_code == 200, 10, "q-wait-1")
    third = in_background(put, "q-wait-2", body("q-wait-2"))
    wait_until(lambda: server.get("/predictions/q-wait-2").status_code == 200, 10, "q-wait-2")
    try:
        assert get_prediction(server, "q-wait-1")["status"] == "starting"
        assert get_prediction(server, "q-wait-2")["status"] == "starting"
        assert server.health()["status"] == "BUSY"

        # The queue is full: the fourth is turned away, and told when to retry.
        overflow = put("q-overflow", body("q-overflow"))
        assert_json_error(overflow, 429)
        retry_after = overflow.headers.get("Retry-After")
        assert retry_after is not None, dict(overflow.headers)
        assert retry_after.strip().isdigit() and int(retry_after) >= 1, retry_after
        assert server.get("/predictions/q-overflow").status_code == 404
    finally:
        gate.open()

    results = [f.result(timeout=30) for f in (first, second, third)]
    for resp, token in zip(results, ["q-run", "q-wait-1", "q-wait-2"], strict=True):
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "succeeded", resp.json()
        assert resp.json()["output"] == f"ok:{token}"
    assert runs_started(runlog) == ["q-run", "q-wait-1", "q-wait-2"]
    server.wait_for_status("READY", timeout=10)


def test_without_a_queue_a_busy_server_answers_409_not_429(start_server, gate, tmp_path):
    server = start_server("cancellable")
    started = tmp_path / "started"
    start_async(
        server, input={"mode": "ok", "token": "held", "gate": str(gate), "started": str(started)}
    )
    try:
        wait_until(started.exists, 10, "the run to start")
        assert_json_error(server.predict({"mode": "ok"}), 409)
    finally:
        gate.open()


def test_queued_prediction_cancelled_before_it_starts_never_runs(start_server, gate, tmp_path):
    server = start_server("cancellable", env={"COG_QUEUE_SIZE": "2"})
    runlog = tmp_path / "runlog"

    def body(token, **extra):
        return {"mode": "ok", "token": token, "runlog": str(runlog), **extra}

    held = start_async(server, "/predictions/held", input=body("held", gate=str(gate)))
    wait_until(lambda: runs_started(runlog) == ["held"], 10, "the held run to start")
    queued = start_async(server, "/predictions/queued", input=body("queued"))
    assert queued["status"] == "starting", queued
    # A synchronous client waiting in the queue for the same slot.
    waiting = in_background(
        server.put, "/predictions/after", json={"input": body("after")}, timeout=60
    )
    wait_until(lambda: server.get("/predictions/after").status_code == 200, 10, "after to queue")
    assert runs_started(runlog) == ["held"]

    try:
        resp = server.post("/predictions/queued/cancel")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {}
        cancelled = wait_for_prediction(server, "queued", timeout=5)
        assert cancelled["status"] == "canceled", cancelled
        assert cancelled["output"] is None, cancelled
    finally:
        gate.open()

    assert wait_for_prediction(server, "held")["status"] == "succeeded"
    # The prediction queued behind the cancelled one runs next, and by the
    # time it is done the cancelled one would have run if it were going to.
    after = waiting.result(timeout=30)
    assert after.status_code == 200, after.text
    assert after.json()["output"] == "ok:after", after.json()
    assert runs_started(runlog) == ["held", "after"]
    assert get_prediction(server, "queued")["status"] == "canceled"
    assert get_prediction(server, "held")["id"] == held["id"]
