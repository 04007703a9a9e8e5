"""Synchronous predictions: the full response envelope, defaults applied to
missing inputs, a run that raises (failed, and the server keeps serving), and
every predictor shape (BasePredictor, BaseRunner, plain function, the hello
example).
"""

from harness import EXAMPLES, log_lines, parse_timestamp

ENVELOPE_KEYS = {
    "id",
    "status",
    "input",
    "output",
    "logs",
    "error",
    "metrics",
    "created_at",
    "started_at",
    "completed_at",
}


def test_sync_prediction_returns_the_full_envelope(start_server):
    server = start_server("basic")
    sent = {"mode": "ok", "token": "env", "seconds": 0.2}
    resp = server.predict(sent)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    prediction = resp.json()

    assert set(prediction) >= ENVELOPE_KEYS, f"missing {ENVELOPE_KEYS - set(prediction)}"
    assert isinstance(prediction["id"], str) and prediction["id"], prediction
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == "ok:env"
    assert prediction["error"] is None
    # The input as sent (the server may add defaults, but not change values).
    assert {k: prediction["input"].get(k) for k in sent} == sent, prediction["input"]
    assert log_lines(prediction) == ["env:ok"], prediction["logs"]

    predict_time = prediction["metrics"]["predict_time"]
    assert isinstance(predict_time, float), prediction["metrics"]
    # The run slept 0.2 s: predict_time measures the run, not just the reply.
    assert 0.15 <= predict_time < 10, predict_time

    created = parse_timestamp(prediction["created_at"])
    started = parse_timestamp(prediction["started_at"])
    completed = parse_timestamp(prediction["completed_at"])
    assert created <= started <= completed, prediction
    assert (completed - started).total_seconds() >= 0.15, prediction


def test_each_prediction_gets_its_own_generated_id(start_server):
    server = start_server("basic")
    ids = {server.predict_ok({"token": str(i)})["id"] for i in range(3)}
    assert len(ids) == 3, ids


def test_post_with_an_id_in_the_body_uses_that_id(start_server):
    server = start_server("basic")
    resp = server.post("/predictions", json={"id": "chosen-by-client", "input": {}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "chosen-by-client"


def test_missing_input_fields_get_their_defaults(start_server):
    server = start_server("basic")
    # No "input" key at all: it is {} and every field takes its default.
    resp = server.post("/predictions", json={})
    assert resp.status_code == 200, resp.text
    prediction = resp.json()
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == "ok:t"


def test_run_raising_fails_that_prediction_and_the_next_one_succeeds(start_server):
    server = start_server("basic")
    failed = server.predict_ok({"mode": "raise", "token": "bad"})
    assert failed["status"] == "failed", failed
    assert "ValueError" in failed["error"] and "boom" in failed["error"], failed["error"]
    assert failed["output"] is None
    assert "bad:about to raise" in log_lines(failed), failed["logs"]
    assert "Traceback" in failed["logs"], failed["logs"]
    assert failed["completed_at"] is not None

    assert server.health()["status"] == "READY"
    ok = server.predict_ok({"mode": "ok", "token": "good"})
    assert ok["status"] == "succeeded", ok
    assert ok["output"] == "ok:good"
    assert "bad:" not in ok["logs"]


def test_base_runner_run_method_serves_predictions(start_server):
    server = start_server("runner")
    default = server.predict_ok()
    assert default["status"] == "succeeded", default
    assert default["output"] == "runner:default-name"
    named = server.predict_ok({"name": "ada"})
    assert named["output"] == "runner:ada"
    assert log_lines(named) == ["running for ada"], named["logs"]


def test_plain_function_predictor_applies_input_and_plain_defaults(start_server):
    server = start_server("function_predictor")
    assert server.predict_ok()["output"] == "ABCABC"
    shouted = server.predict_ok({"text": "hey", "times": 3})
    assert shouted["status"] == "succeeded", shouted
    assert shouted["output"] == "HEYHEYHEY"
    assert log_lines(shouted) == ["shouting 'hey' 3 times"], shouted["logs"]


def test_hello_example_greets(start_server):
    server = start_server(EXAMPLES / "hello")
    assert server.predict_ok()["output"] == "hello, world"
    greeted = server.predict_ok({"name": "cog"})
    assert greeted["output"] == "hello, cog"
    assert log_lines(greeted) == ["greeting cog"], greeted["logs"]
