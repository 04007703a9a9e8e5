"""Small edges of the HTTP contract: a whole number beyond 64 bits is refused
with 422 rather than rounded on its way to the model, `Accept:
text/event-stream;q=0` is not a request for events, and the `Bearer` scheme
is matched without regard to case.
"""

from harness import assert_json_error


def test_integers_beyond_64_bits_are_refused_and_edges_arrive_exactly(start_server):
    server = start_server("hostile")
    for edge in ("18446744073709551615", "-9223372036854775808"):
        body = f'{{"input": {{"mode": "size", "size": {edge}}}}}'
        resp = server.post("/predictions", data=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"] == edge
    for beyond in ("18446744073709551617", "-9223372036854775809", "100000000000000000000"):
        body = f'{{"input": {{"mode": "size", "size": {beyond}}}}}'
        resp = server.post("/predictions", data=body, headers={"Content-Type": "application/json"})
        [entry] = assert_json_error(resp, 422)["detail"]
        assert entry["loc"] == ["body", "input", "size"], entry
        assert "64 bits" in entry["msg"], entry


def test_an_event_stream_of_zero_weight_is_not_asked_for(start_server):
    server = start_server("streamer")
    refused = {"Accept": "text/event-stream;q=0, application/json"}
    resp = server.predict({}, headers=refused)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["status"] == "succeeded"
    wanted = {"Accept": "application/json;q=0.5, text/event-stream"}
    with server.predict({}, headers=wanted, stream=True) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers


def test_the_bearer_scheme_is_case_insensitive(start_server):
    server = start_server("basic", env={"COG_API_TOKEN": "tok-case"})
    for scheme in ("Bearer", "bearer", "BEARER"):
        resp = server.predict({}, headers={"Authorization": f"{scheme} tok-case"})
        assert resp.status_code == 200, (scheme, resp.text)
    assert_json_error(server.predict({}, headers={"Authorization": "Basic tok-case"}), 401)
