"""POST /predictions/{id}/cancel: 200 `{}` for a known prediction (harmless once
it finished), 404 otherwise. A sync run gets CancelationException raised in
its code, even in a busy loop or inside time.sleep; an async run gets its
task cancelled. Either way the prediction ends `canceled`, promptly. A
synchronous client that disconnects (or times out) cancels its prediction, and
a cancel sent right after create always wins.

A run that does not stop (stuck in a native call, or swallowing the
exception) is reported `canceled` to its clients after COG_CANCEL_GRACE
seconds, but keeps its slot (health BUSY) until it returns: the worker is not
killed for it, so no number of such cancels makes the model DEFUNCT. Only
COG_CANCEL_KILL_AFTER (off by default) has the worker replaced, and a
replacement the server chose never counts against COG_MAX_WORKER_RESTARTS.
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


def worker_of(started):
    """The pid of the worker a run started in (the model writes it to `started`)."""
    return wait_until(lambda: started.exists() and started.read_text(), 10, "the run to start")


def deaf(tmp_path, name):
    """The input of a run that no cancel reaches until `release` exists, and
    its `started` and `release` files."""
    started, release = tmp_path / f"started-{name}", tmp_path / f"release-{name}"
    return {"mode": "deaf", "started": str(started), "release": str(release)}, started, release


def leave(server, how, prediction_id, input, started):
    """Creates a prediction and leaves it the way `how` says a client does."""
    body = {"input": input}
    if how == "cancel":
        # A synchronous client waits while another cancels.
        waiting = start_held_sync(server, prediction_id, input, started)
        cancel(server, prediction_id)
        return waiting
    if how == "client timeout":
        # As `curl -m 1` does.
        with pytest.raises(requests.Timeout):
            server.put(f"/predictions/{prediction_id}", json=body, timeout=1)
    elif how == "hang up":
        sock = send_and_hang_up(server, "PUT", f"/predictions/{prediction_id}", body)
        worker_of(started)
        sock.close()
    else:
        start_async(server, f"/predictions/{prediction_id}", **body)
        worker_of(started)
        cancel(server, prediction_id)
    return None


def test_a_cancel_the_run_cannot_hear_ends_the_prediction_and_keeps_the_worker(
    start_server, tmp_path
):
    # Four runs stuck where no cancel reaches them (a long native call), each
    # left a different way, against a restart budget of three: none of them
    # may cost the worker, let alone make the model DEFUNCT.
    grace = 0.5
    server = start_server("cancellable", env={"COG_CANCEL_GRACE": str(grace)})
    setup_started = server.health()["setup"]["started_at"]
    workers = set()
    for how in ["cancel", "client timeout", "hang up", "async cancel"]:
        prediction_id = f"deaf-{how.replace(' ', '-')}"
        input, started, release = deaf(tmp_path, prediction_id)
        t0 = time.monotonic()
        waiting = leave(server, how, prediction_id, input, started)
        workers.add(worker_of(started))
        # Canceled for its clients once the grace period is over, while the
        # run goes on.
        done = wait_for_prediction(server, prediction_id, timeout=grace + PROMPT_S)
        assert done["status"] == "canceled", (how, done)
        assert time.monotonic() - t0 < 1 + grace + PROMPT_S, how
        if waiting is not None:
            resp = waiting.result(timeout=PROMPT_S)
            assert resp.status_code == 200 and resp.json()["status"] == "canceled", resp.text
        # The slot is the run's until it returns.
        assert server.health()["status"] == "BUSY", how
        assert_json_error(server.predict({"mode": "ok"}), 409)
        release.touch()
        server.wait_for_status("READY", timeout=10)
        assert get_prediction(server, prediction_id)["status"] == "canceled", how
        after = tmp_path / f"after-{prediction_id}"
        assert server.predict_ok({"mode": "ok", "started": str(after)})["status"] == "succeeded"
        workers.add(worker_of(after))
    # One worker throughout, set up once.
    assert len(workers) == 1, workers
    assert server.health()["setup"]["started_at"] == setup_started


def test_a_cancel_kill_policy_replaces_a_deaf_run_without_spending_the_restart_budget(
    start_server, tmp_path
):
    env = {
        "COG_CANCEL_GRACE": "0.2",
        "COG_CANCEL_KILL_AFTER": "1",
        "COG_MAX_WORKER_RESTARTS": "1",
    }
    server = start_server("cancellable", env=env)
    workers = []
    for i in range(3):
        input, started, _release = deaf(tmp_path, str(i))
        start_async(server, f"/predictions/killed-{i}", input=input)
        workers.append(worker_of(started))
        t0 = time.monotonic()
        cancel(server, f"killed-{i}")
        done = wait_for_prediction(server, f"killed-{i}", timeout=PROMPT_S)
        assert done["status"] == "canceled", done
        # Replaced once the kill policy's time is up, and set up again.
        server.wait_for_status("STARTING", "READY", timeout=PROMPT_S)
        server.wait_for_status("READY", timeout=30)
        assert time.monotonic() - t0 >= 1
    after = tmp_path / "after"
    assert server.predict_ok({"mode": "ok", "started": str(after)})["status"] == "succeeded"
    workers.append(worker_of(after))
    # Four workers, three of them chosen by the server: no crash among them.
    assert len(set(workers)) == 4, workers


def test_a_run_that_swallows_every_cancel_is_stopped_by_the_kill_policy(start_server, tmp_path):
    grace, kill_after = 0.5, 1.5
    env = {"COG_CANCEL_GRACE": str(grace), "COG_CANCEL_KILL_AFTER": str(kill_after)}
    server = start_server("cancellable", env=env)
    started, marker = tmp_path / "started", tmp_path / "marker"
    future = start_held_sync(
        server,
        "c-swallow",
        {"mode": "swallow", "seconds": 60, "started": str(started), "marker": str(marker)},
        started,
    )
    worker = worker_of(started)

    t0 = time.monotonic()
    cancel(server, "c-swallow")
    resp = future.result(timeout=30)
    elapsed = time.monotonic() - t0

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "canceled", resp.json()
    assert marker.read_text() == "swallowed", "the run never saw the cancel"
    # It was given its grace period, and not much more.
    assert grace * 0.9 <= elapsed < grace + PROMPT_S, f"answered after {elapsed:.2f}s"
    assert server.health()["status"] == "BUSY"

    # The run still held the slot when the kill policy's time was up: the
    # worker is replaced, and the new one serves.
    server.wait_for_status("READY", timeout=30)
    assert time.monotonic() - t0 >= kill_after
    after = tmp_path / "after"
    assert server.predict_ok({"mode": "ok", "started": str(after)})["status"] == "succeeded"
    assert worker_of(after) != worker
    assert get_prediction(server, "c-swallow")["status"] == "canceled"


@pytest.mark.parametrize("respond", ["async", "sync"])
def test_a_cancel_sent_right_after_create_always_wins(start_server, respond):
    server = start_server("cancellable")
    # A large input keeps the worker busy reading it before the run begins,
    # while the cancel, on another channel, may already be there.
    body = {"input": {"mode": "sleep", "seconds": 30, "padding": "x" * (1 << 20)}}
    for i in range(100):
        prediction_id = f"race-{respond}-{i}"
        t0 = time.monotonic()
        if respond == "async":
            start_async(server, f"/predictions/{prediction_id}", **body)
            cancel(server, prediction_id)
            done = wait_for_prediction(server, prediction_id, timeout=PROMPT_S)
        else:
            waiting = in_background(
                server.put, f"/predictions/{prediction_id}", json=body, timeout=60
            )
            # Cancelled the moment it exists.
            while server.post(f"/predictions/{prediction_id}/cancel").status_code == 404:
                pass
            done = waiting.result(timeout=PROMPT_S).json()
        assert done["status"] == "canceled", (i, done)
        assert time.monotonic() - t0 < PROMPT_S, i
        # Lost cancels would show as a busy slot here, not as a 409 later.
        server.wait_for_status("READY", timeout=PROMPT_S)


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
