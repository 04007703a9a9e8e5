"""Size limits: an input too large for one protocol frame still reaches the
run whole (it travels through a file); a request body over
COG_MAX_BODY_BYTES is refused with a JSON 413, a URI over 8 KiB with 414,
headers over 64 KiB with 431, a prediction id that is not 1 to 128 characters
of letters, digits, '_', '.' and '-' with 422; past COG_MAX_STREAMS open event
streams a new one gets 429 with Retry-After, and a place frees when a stream's
client goes away. The server keeps serving after each.
"""

import hashlib

import pytest
from harness import SseStream, assert_json_error, wait_until


def test_an_8_mib_input_reaches_the_run_whole(start_server):
    server = start_server("echo")
    text = "abcdefgh" * (1024 * 1024)  # 8 MiB, past the 8 MiB frame limit with its envelope
    prediction = server.predict_ok({"text": text}, timeout=60)
    assert prediction["status"] == "succeeded", prediction.get("error")
    assert prediction["output"]["length"] == len(text)
    assert prediction["output"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_large_requests_get_the_same_answers_as_small_ones(start_server):
    # Bodies of a few hundred KiB and more are admitted off the server's
    # event loop thread; what the client sees must not change.
    server = start_server("echo")
    text = "é" * (300 * 1024)
    first = server.put("/predictions/big-1", json={"input": {"text": text}}, timeout=60)
    assert first.status_code in (200, 201, 202), first.text
    again = server.put("/predictions/big-1", json={"input": {"text": text}}, timeout=60)
    assert again.json()["id"] == "big-1"
    done = wait_until(
        lambda: (p := server.get("/predictions/big-1").json())["status"] == "succeeded" and p,
        30,
        "the large prediction to finish",
    )
    assert done["output"]["length"] == len(text)
    assert done["input"]["text"] == text
    # A wrong type, and a body that is not JSON, are refused as usual.
    bad = server.predict({"text": ["x" * (400 * 1024)]})
    assert bad.status_code == 422, bad.text
    assert bad.json()["detail"][0]["loc"][-1] == "text", bad.text
    assert_json_error(
        server.post(
            "/predictions",
            data=b'{"input": {"text": "' + b"x" * (400 * 1024),
            headers={"Content-Type": "application/json"},
        ),
        400,
    )
    assert server.predict_ok({"text": "after"})["output"]["length"] == 5


def test_a_body_over_the_limit_is_refused_with_413(start_server):
    server = start_server("echo", env={"COG_MAX_BODY_BYTES": "10000"})
    assert_json_error(server.predict({"text": "x" * 20000}), 413)
    assert server.predict_ok({"text": "small"})["output"]["length"] == 5


def test_a_long_uri_is_refused_with_414(start_server):
    server = start_server("echo")
    body = assert_json_error(server.get("/predictions/" + "a" * 9000), 414)
    assert "URI" in body["detail"], body
    assert_json_error(server.predict({"text": "x"}, params={"q": "y" * 9000}), 414)
    # Past what the HTTP layer itself reads, the answer is the same status.
    assert server.get("/predictions/" + "a" * 70_000).status_code == 414
    assert server.predict_ok({"text": "after"})["output"]["length"] == 5


def test_large_headers_are_refused_with_431(start_server):
    server = start_server("echo")
    body = assert_json_error(server.predict({"text": "x"}, headers={"X-Big": "b" * 70_000}), 431)
    assert "headers" in body["detail"], body
    many = {f"X-H{i}": "v" * 1000 for i in range(80)}
    assert_json_error(server.predict({"text": "x"}, headers=many), 431)
    assert server.predict_ok({"text": "after"})["output"]["length"] == 5


@pytest.mark.parametrize(
    "prediction_id, why",
    [
        ("a" * 129, "at most 128"),
        ("has%20space", "only letters"),
        ("caf%C3%A9", "only letters"),
        ("semi%3Bcolon", "only letters"),
    ],
)
def test_a_bad_prediction_id_in_the_path_is_refused_with_422(start_server, prediction_id, why):
    server = start_server("echo")
    resp = server.put(f"/predictions/{prediction_id}", json={"input": {"text": "x"}})
    body = assert_json_error(resp, 422)
    assert body["detail"][0]["loc"] == ["path", "id"], body
    assert why in body["detail"][0]["msg"], body


def test_a_bad_prediction_id_in_the_body_is_refused_with_422(start_server):
    server = start_server("echo")
    for bad in ["", "a b", "x" * 129, "../up"]:
        resp = server.post("/predictions", json={"id": bad, "input": {"text": "x"}})
        body = assert_json_error(resp, 422)
        assert body["detail"][0]["loc"] == ["body", "id"], body


def test_ids_of_the_usual_shapes_are_accepted(start_server):
    server = start_server("echo")
    for good in ["a" * 128, "0b8f6c4e-3f1a-4c2e-9d7b-2a1e5f6c7d8e", "run_1.v2"]:
        resp = server.put(f"/predictions/{good}", json={"input": {"text": "x"}})
        assert resp.status_code == 200, resp.text[:500]
        assert resp.json()["id"] == good


def test_streams_past_the_cap_get_429_and_a_place_frees_when_a_client_leaves(start_server, gate):
    server = start_server("streamer", env={"COG_MAX_STREAMS": "1"})
    body = {"input": {"chunks": 3, "gate": str(gate), "hold_at": 1}}
    first = SseStream(server, "PUT", "/predictions/held-stream", body)
    assert first.status == 200, first.body
    first.wait_for_event("output")

    second = SseStream(server, "PUT", "/predictions/held-stream", body)
    assert second.status == 429, second.body
    assert second.headers.get("retry-after") == "1", second.headers
    assert "COG_MAX_STREAMS" in second.body.decode()

    # The first client goes away; its place frees once the server notices.
    first.close()

    def reattached():
        stream = SseStream(server, "PUT", "/predictions/held-stream", body)
        if stream.status == 429:
            stream.close()
            return None
        return stream

    third = wait_until(reattached, timeout=15, what="a stream place to free", interval=0.1)
    assert third.status == 200, third.body
    gate.open()
    events = third.wait_ended()
    assert events[-1].name == "completed", events
    assert events[-1].json["status"] == "succeeded", events[-1].json
