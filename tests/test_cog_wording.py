"""The server's words where clients and scripts match on them, as Cog's
runtime says them.

Every error body carries the message twice: under `error`, as Cog's runtime
answers, and under `detail`, as older Cog (and FastAPI clients) read it; a 422
keeps its list of problems under `detail` alone, as both generations answer.
The texts clients match on are Cog's: 404 `Prediction not found`, 409 `At
capacity - all prediction slots busy`, 503 while setup runs `Setup has not
finished yet. …`, and the 406 for an event stream from a model that does not
stream. Stream errors, metric events and healthcheck failures are checked in
test_streaming.py, test_metrics.py and test_healthcheck.py.
"""

import json

import pytest
from harness import SseStream, assert_json_error, in_background, wait_until

AT_CAPACITY = "At capacity - all prediction slots busy"
NOT_FOUND = "Prediction not found"
SETUP_RUNNING = (
    "Setup has not finished yet. Wait until it has finished, or GET /health-check for status."
)
NOT_STREAMING = (
    "This model does not support streaming responses. "
    "Add @cog.streaming to predict() to enable SSE."
)


def error_of(resp, status):
    """The body of an error answer: `error` and `detail` say the same."""
    body = assert_json_error(resp, status)
    assert body["error"] == body["detail"], body
    return body


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/predictions/nobody"), ("POST", "/predictions/nobody/cancel")],
    ids=["get", "cancel"],
)
def test_an_unknown_prediction_is_not_found_in_cogs_words(start_server, method, path):
    server = start_server("basic")
    body = error_of(server.request(method, path), 404)
    assert body["error"] == NOT_FOUND, body


def test_a_busy_model_answers_409_at_capacity_in_cogs_words(start_server, gate):
    server = start_server("basic")
    held = in_background(server.predict, {"gate": str(gate)})
    wait_until(lambda: server.health()["status"] == "BUSY", 10, "the slot to be taken")
    for resp in (
        server.predict({"token": "second"}),
        server.put("/predictions/second", json={"input": {}}, headers={"Prefer": "respond-async"}),
    ):
        body = error_of(resp, 409)
        assert body["error"] == AT_CAPACITY, body
        assert body["status"] == "failed", body
    gate.open()
    assert held.result(timeout=30).json()["status"] == "succeeded"


def test_a_model_still_in_setup_answers_503_in_cogs_words(start_server, tmp_path):
    setup_gate = tmp_path / "setup-gate"
    server = start_server("slow_setup", ready=False, env={"SETUP_GATE": str(setup_gate)})
    assert server.health()["status"] == "STARTING"
    body = error_of(server.predict(), 503)
    assert body["error"] == SETUP_RUNNING, body
    assert body["status"] == "failed", body
    setup_gate.touch()
    server.wait_for_status("READY")
    assert server.predict_ok()["status"] == "succeeded"


def test_an_invalid_input_keeps_its_list_under_detail_alone_as_cog_does(start_server):
    server = start_server("basic")
    resp = server.predict({"seconds": "soon", "nope": 1})
    body = assert_json_error(resp, 422)
    assert list(body) == ["detail"], body
    fields = sorted(entry["loc"][-1] for entry in body["detail"])
    assert fields == ["nope", "seconds"], body


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [("{bad", "application/json", 400), ("{}", "text/plain", 415)],
    ids=["not-json", "text-plain"],
)
def test_a_malformed_request_says_the_same_under_error_and_detail(
    start_server, data, content_type, status
):
    server = start_server("basic")
    resp = server.post("/predictions", data=data, headers={"Content-Type": content_type})
    error_of(resp, status)


def test_an_event_stream_from_a_model_that_does_not_stream_is_406_in_cogs_words(start_server):
    server = start_server("basic")
    stream = SseStream(server, "POST", "/predictions", {"input": {}})
    assert stream.status == 406, (stream.status, stream.body)
    assert stream.headers["content-type"].startswith("application/json"), stream.headers
    body = json.loads(stream.body)
    assert body == {"error": NOT_STREAMING, "detail": NOT_STREAMING}, body
