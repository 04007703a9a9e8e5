"""`Prefer: respond-async`: 202 at once with the prediction in `starting`; the
run goes on after the client has gone; GET /predictions/{id} shows where it
is (404 for an id the server never saw), and a finished prediction stays
retrievable.
"""

from harness import (
    TERMINAL_STATUSES,
    assert_json_error,
    get_prediction,
    log_lines,
    parse_timestamp,
    start_async,
    wait_for_prediction,
    wait_until,
)


def test_respond_async_answers_202_at_once_and_the_run_can_be_polled(start_server, gate, tmp_path):
    server = start_server("cancellable")
    started = tmp_path / "started"
    accepted = start_async(
        server,
        "/predictions/polled",
        input={"mode": "ok", "token": "poll", "gate": str(gate), "started": str(started)},
    )
    assert accepted["id"] == "polled"
    assert accepted["status"] == "starting", accepted
    assert accepted["output"] is None, accepted
    assert accepted["input"]["token"] == "poll", accepted

    # The client that created it is gone (requests closed its connection),
    # and the run is still going.
    wait_until(started.exists, 10, "the run to start")
    running = get_prediction(server, "polled")
    assert running["id"] == "polled"
    assert running["status"] in ("starting", "processing"), running
    assert running["status"] not in TERMINAL_STATUSES
    assert server.health()["status"] == "BUSY"

    gate.open()
    done = wait_for_prediction(server, "polled")
    assert done["status"] == "succeeded", done
    assert done["output"] == "ok:poll"
    assert log_lines(done) == ["poll:ok"], done["logs"]
    assert parse_timestamp(done["completed_at"]) >= parse_timestamp(done["started_at"])

    # Finished predictions stay retrievable, unchanged.
    server.wait_for_status("READY", timeout=10)
    server.predict_ok({"mode": "ok", "token": "other"})
    again = get_prediction(server, "polled")
    assert again == done


def test_respond_async_with_a_generated_id_is_retrievable_by_that_id(start_server):
    server = start_server("cancellable")
    accepted = start_async(server, input={"mode": "ok", "token": "gen"})
    assert accepted["id"], accepted
    done = wait_for_prediction(server, accepted["id"])
    assert done["status"] == "succeeded", done
    assert done["output"] == "ok:gen"


def test_sync_prediction_is_retrievable_after_it_finished(start_server):
    server = start_server("cancellable")
    resp = server.put("/predictions/sync-done", json={"input": {"mode": "ok", "token": "s"}})
    assert resp.status_code == 200, resp.text
    assert get_prediction(server, "sync-done") == resp.json()


def test_get_of_an_unknown_prediction_is_404(start_server):
    server = start_server("cancellable")
    assert_json_error(server.get("/predictions/never-created"), 404)
