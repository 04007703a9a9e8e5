"""Several slots: COG_MAX_CONCURRENCY, else @cog.concurrent(max=N) (on the run
method or the class), else cog.yaml `concurrency.max`, else 1. More than one
slot needs an async run; async runs share one event loop, so N sleeping runs
finish together, the next one gets 409 while all are busy, and every
prediction's logs hold only its own lines, even those printed by a task the
run spawns.
"""

import threading
import time

import pytest
from harness import (
    assert_json_error,
    count_slots,
    in_background,
    log_lines,
    parse_timestamp,
    start_async,
    wait_for_prediction,
    wait_until,
)

FOUR_SLOTS = {"COG_MAX_CONCURRENCY": "4"}


def predict_together(server, inputs):
    """Send one POST /predictions per input at the same instant; return the
    responses (in input order) and the wall time until the last one came back."""
    barrier = threading.Barrier(len(inputs) + 1)

    def send(payload):
        barrier.wait(timeout=10)
        return server.predict(payload, timeout=30)

    futures = [in_background(send, payload) for payload in inputs]
    barrier.wait(timeout=10)
    started = time.monotonic()
    responses = [f.result(timeout=40) for f in futures]
    return responses, time.monotonic() - started


def test_four_async_runs_of_one_second_finish_together_in_about_one_second(start_server):
    server = start_server("async_slots", env=FOUR_SLOTS)
    inputs = [{"token": f"r{i}", "seconds": 1.0, "lines": 1} for i in range(4)]
    responses, elapsed = predict_together(server, inputs)

    for i, resp in enumerate(responses):
        assert resp.status_code == 200, f"run {i}: {resp.status_code}: {resp.text[:500]}"
        assert resp.json()["status"] == "succeeded", resp.json()
        assert resp.json()["output"] == f"done:r{i}"
    # One after another would take 4 s; together, a little over 1 s.
    assert 1.0 <= elapsed < 1.8, f"four 1 s runs took {elapsed:.2f}s in all"

    # They really overlapped: each started before any of them completed.
    predictions = [r.json() for r in responses]
    last_start = max(parse_timestamp(p["started_at"]) for p in predictions)
    first_end = min(parse_timestamp(p["completed_at"]) for p in predictions)
    assert last_start < first_end, predictions
    assert server.health()["status"] == "READY"


def test_fifth_prediction_gets_409_while_four_slots_are_busy(start_server, gate, tmp_path):
    server = start_server("async_slots", env=FOUR_SLOTS)
    started = [tmp_path / f"started-{i}" for i in range(3)]
    held = [
        in_background(
            server.predict, {"token": f"h{i}", "gate": str(gate), "started": str(started[i])}
        )
        for i in range(3)
    ]
    try:
        wait_until(lambda: all(p.exists() for p in started), 10, "three runs to start")
        # Three of four slots busy: not BUSY yet, and a fourth is taken.
        assert server.health()["status"] == "READY"
        fourth = start_async(server, input={"token": "h3", "gate": str(gate)})
        server.wait_for_status("BUSY", timeout=10)

        assert_json_error(server.predict({"token": "fifth"}), 409)
        assert_json_error(server.put("/predictions/fifth", json={"input": {}}), 409)
        assert server.health()["status"] == "BUSY"
    finally:
        gate.open()

    for i, future in enumerate(held):
        resp = future.result(timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"] == f"done:h{i}", resp.json()
    assert wait_for_prediction(server, fourth["id"])["output"] == "done:h3"
    server.wait_for_status("READY", timeout=10)
    assert server.predict_ok({"token": "after"})["output"] == "done:after"


@pytest.mark.parametrize("spawn", [False, True], ids=["in-run", "in-spawned-task"])
def test_concurrent_runs_keep_their_own_log_lines(start_server, spawn):
    server = start_server("async_slots", env=FOUR_SLOTS)
    lines = 8
    inputs = [
        {"token": f"tok{i}", "seconds": 0.8, "lines": lines, "spawn": spawn} for i in range(4)
    ]
    responses, _ = predict_together(server, inputs)

    where = "task" if spawn else "run"
    for i, resp in enumerate(responses):
        assert resp.status_code == 200, resp.text
        prediction = resp.json()
        assert prediction["status"] == "succeeded", prediction
        expected = [f"tok{i}:{where}-{n}" for n in range(lines)]
        assert log_lines(prediction) == expected, prediction["logs"]


def test_async_model_without_any_declaration_gets_one_slot(start_server, gate):
    server = start_server("async_slots")
    assert count_slots(server, gate) == 1


@pytest.mark.parametrize(
    ("predictor", "slots"),
    [
        ("Undeclared", 3),  # cog.yaml concurrency.max
        ("MethodDecorated", 2),  # @concurrent(max=2) on predict, over cog.yaml's 3
        ("ClassDecorated", 4),  # @concurrent(max=4) on the class, over cog.yaml's 3
    ],
)
def test_concurrency_comes_from_the_decorator_else_cog_yaml(start_server, gate, predictor, slots):
    server = start_server(
        "concurrency_yaml", env={"COG_PREDICT_TYPE_STUB": f"predict.py:{predictor}"}
    )
    assert count_slots(server, gate) == slots


@pytest.mark.parametrize("predictor", ["Undeclared", "MethodDecorated", "ClassDecorated"])
def test_cog_max_concurrency_overrides_decorator_and_cog_yaml(start_server, gate, predictor):
    server = start_server(
        "concurrency_yaml",
        env={"COG_PREDICT_TYPE_STUB": f"predict.py:{predictor}", "COG_MAX_CONCURRENCY": "5"},
    )
    assert count_slots(server, gate) == 5


@pytest.mark.parametrize(
    ("model", "env", "slots"),
    [
        ("sync_concurrent", {}, 2),  # cog.yaml concurrency.max: 2
        ("sync_concurrent", {"COG_PREDICT_TYPE_STUB": "predict.py:Decorated"}, 3),
        ("basic", {"COG_MAX_CONCURRENCY": "2"}, 2),
    ],
    ids=["cog-yaml", "decorator", "env"],
)
def test_more_than_one_slot_with_a_sync_run_fails_setup_with_a_clear_message(
    start_server, model, env, slots
):
    server = start_server(model, env=env, ready=False)
    health = server.wait_for_status("SETUP_FAILED", timeout=30)
    logs = health["setup"]["logs"]
    assert "async" in logs, f"setup.logs should say the run must be async: {logs!r}"
    assert str(slots) in logs, f"setup.logs should name the {slots} slots asked for: {logs!r}"
    assert health["setup"]["status"] == "failed", health
    assert_json_error(server.predict({}), 503)


def test_cog_max_concurrency_of_one_lets_a_sync_model_run_despite_cog_yaml(start_server):
    server = start_server("sync_concurrent", env={"COG_MAX_CONCURRENCY": "1"})
    assert server.predict_ok({"name": "ok"})["output"] == "sync:ok"
