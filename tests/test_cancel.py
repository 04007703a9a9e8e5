"""POST /predictions/{id}/cancel: 200 `{}` for a known prediction (harmless once
it finished), 404 otherwise. A sync run gets CancelationException raised in
its code, even in a busy loop or inside time.sleep; an async run gets its
task cancelled. Either way the prediction ends `canceled`, promptly. A run
that swallows the exception is cut off after COG_CANCEL_GRACE seconds, and
the worker, its only slot gone, is given up and replaced. A synchronous client
that disconnects cancels its prediction.
"""

import time

import pytest
import requests
from harness import (
    assert_json_error,
    get_prediction,
    in_background,
    send_and_hang_up,
    start_async,
    wait_for_prediction,
    wait_until,
)

# A cancelled run must end well before the 60 s it would otherwise take.
PROMPT_S = 3.0


def cancel(server, prediction_id):
    resp = server.post(f"/predictions/{prediction_id}/cancel", timeout=10)
    assert resp.status_code == 200, f"cancel {prediction_id}: {resp.status_code}: {resp.text}"
    assert resp.json() == {}, resp.text
    return resp


def start_held_sync(server, prediction_id, input, started):
    """PUT a synchronous prediction in the background and wait until its run
    has started; returns the future of its response."""
    future = in_background(
        server.put, f"/predictions/{prediction_id}", json={"input": input}, timeout=60
    )
    wait_until(started.exists, 10, f"run {prediction_id} to start")
    return future


@pytest.mark.parametrize("mode", ["busy", "sleep", "reraise"])
def test_cancel_interrupts_a_sync_run_promptly(start_server, tmp_path, mode):
    server = start_server("cancellable")
    started, marker = tmp_path / "started", tmp_path / "marker"
    future = start_held_sync(
        server,
        f"c-{mode}",
        {"mode": mode, "seconds": 60, "started": str(started), "marker": str(marker)},
        started,
    )

    t0 = time.monotonic()
    cancel(server, f"c-{mode}")
    resp = future.result(timeout=30)
    elapsed = time.monotonic() - t0

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "canceled", resp.json()
    assert elapsed < PROMPT_S, f"cancel of a {mode} run took {elapsed:.2f}s"
    if mode == "reraise":
        # The run itself saw the exception (the model records and re-raises it).
        assert marker.read_text() == "CancelationException"
    assert get_prediction(server, f"c-{mode}")["status"] == "canceled"

    # The model keeps serving.
    server.wait_for_status("READY", timeout=10)
    assert server.predict_ok({"mode": "ok", "token": "next"})["output"] == "ok:next"


def test_cancel_of_a_respond_async_sync_run_ends_it_canceled(start_server, tmp_path):
    server = start_server("cancellable")
    started = tmp_path / "started"
    start_async(
        server,
        "/predictions/c-async-req",
        input={"mode": "sleep", "seconds": 60, "started": str(started)},
    )
    wait_until(started.exists, 10, "the run to start")
    t0 = time.monotonic()
    cancel(server, "c-async-req")
    done = wait_for_prediction(server, "c-async-req", timeout=PROMPT_S + 5)
    assert done["status"] == "canceled", done
    assert time.monotonic() - t0 < PROMPT_S
    server.wait_for_status("READY", timeout=10)


def test_run_that_swallows_the_cancel_is_cut_off_after_the_grace_period(start_server, tmp_path):
    grace = 1.0
    server = start_server("cancellable", env={"COG_CANCEL_GRACE": str(grace)})
    started, marker = tmp_path / "started", tmp_path / "marker"
    future = start_held_sync(
        server,
        "c-swallow",
        {"mode": "swallow", "seconds": 60, "started": str(started), "marker": str(marker)},
        started,
    )

    t0 = time.monotonic()
    cancel(server, "c-swallow")
    resp = future.result(timeout=30)
    elapsed = time.monotonic() - t0

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "canceled", resp.json()
    assert marker.read_text() == "swallowed", "the run never saw the cancel"
    # It was given its grace period, and not much more.
    assert grace * 0.9 <= elapsed < grace + PROMPT_S, f"cut off after {elapsed:.2f}s"
    assert get_prediction(server, "c-swallow")["status"] == "canceled"

    # The only slot was still stuck in the run, so that worker was given up;
    # a new one takes its place and serves again.
    server.wait_for_status("READY", timeout=30)
    assert server.predict_ok({"mode": "ok"})["status"] == "succeeded"


def test_cancel_of_an_async_run_cancels_its_task_and_spares_the_others(start_server, tmp_path):
    server = start_server("async_slots", env={"COG_MAX_CONCURRENCY": "2"})
    started, marker = tmp_path / "started", tmp_path / "marker"
    victim = in_background(
        server.put,
        "/predictions/c-async",
        json={
            "input": {
                "token": "victim",
                "seconds": 60,
                "lines": 0,
                "started": str(started),
                "marker": str(marker),
            }
        },
        timeout=60,
    )
    wait_until(started.exists, 10, "the async run to start")
    bystander = in_background(server.predict, {"token": "bystander", "seconds": 1.0}, timeout=30)

    t0 = time.monotonic()
    cancel(server, "c-async")
    resp = victim.result(timeout=30)
    elapsed = time.monotonic() - t0

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "canceled", resp.json()
    assert elapsed < PROMPT_S, f"cancel of an async run took {elapsed:.2f}s"
    assert marker.read_text() == "CancelledError"

    # The other run on the shared event loop was not touched.
    other = bystander.result(timeout=30)
    assert other.status_code == 200, other.text
    assert other.json()["status"] == "succeeded", other.json()
    assert other.json()["output"] == "done:bystander"
    server.wait_for_status("READY", timeout=10)


def test_cancel_of_an_unknown_prediction_is_404(start_server):
    server = start_server("cancellable")
    assert_json_error(server.post("/predictions/no-such-id/cancel"), 404)


def test_cancel_after_the_prediction_finished_is_harmless(start_server):
    server = start_server("cancellable")
    resp = server.put("/predictions/finished", json={"input": {"mode": "ok", "token": "f"}})
    assert resp.status_code == 200, resp.text
    finished = resp.json()
    assert finished["status"] == "succeeded", finished

    cancel(server, "finished")
    cancel(server, "finished")
    assert get_prediction(server, "finished") == finished
    assert server.health()["status"] == "READY"
    assert server.predict_ok({"mode": "ok", "token": "next"})["output"] == "ok:next"


def test_client_disconnecting_from_a_sync_request_cancels_the_run(start_server, tmp_path):
    server = start_server("cancellable")
    started, marker = tmp_path / "started", tmp_path / "marker"
    body = {
        "input": {
            "mode": "reraise",
            "seconds": 60,
            "started": str(started),
            "marker": str(marker),
        }
    }
    sock = send_and_hang_up(server, "PUT", "/predictions/hung-up", body)
    try:
        wait_until(started.exists, 10, "the run to start")
    finally:
        sock.close()

    done = wait_for_prediction(server, "hung-up", timeout=PROMPT_S + 5)
    assert done["status"] == "canceled", done
    wait_until(marker.exists, 5, "the run to record its CancelationException")
    assert marker.read_text() == "CancelationException"
    server.wait_for_status("READY", timeout=10)
    assert server.predict_ok({"mode": "ok", "token": "next"})["output"] == "ok:next"


def test_client_timing_out_on_a_sync_request_cancels_the_run(start_server, tmp_path):
    server = start_server("cancellable")
    marker = tmp_path / "marker"
    with pytest.raises(requests.Timeout):
        server.put(
            "/predictions/timed-out",
            json={"input": {"mode": "reraise", "marker": str(marker)}},
            timeout=1.0,
        )
    done = wait_for_prediction(server, "timed-out", timeout=PROMPT_S + 5)
    assert done["status"] == "canceled", done
    wait_until(marker.exists, 5, "the run to record its CancelationException")
    server.wait_for_status("READY", timeout=10)


def test_respond_async_prediction_survives_its_client_disconnecting(start_server, gate, tmp_path):
    server = start_server("cancellable")
    started = tmp_path / "started"
    body = {"input": {"mode": "ok", "token": "stays", "gate": str(gate), "started": str(started)}}
    sock = send_and_hang_up(
        server, "PUT", "/predictions/left-alone", body, {"Prefer": "respond-async"}
    )
    # Hang up without even reading the 202.
    wait_until(started.exists, 10, "the run to start")
    sock.close()
    time.sleep(0.3)  # give a (wrong) cancel-on-disconnect the chance to happen
    assert get_prediction(server, "left-alone")["status"] in ("starting", "processing")
    gate.open()
    done = wait_for_prediction(server, "left-alone")
    assert done["status"] == "succeeded", done
    assert done["output"] == "ok:stays"
