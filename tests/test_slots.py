"""The single prediction slot: while a run holds it, health says BUSY and new
predictions get 409; it is free again by the time the reply is sent, so a
client sending its next request right after a reply never sees a 409.
"""

from harness import EXAMPLES, assert_json_error, in_background


def test_busy_slot_answers_409_and_health_says_busy(start_server, gate):
    server = start_server("basic")
    held = in_background(server.predict, {"mode": "ok", "token": "held", "gate": str(gate)})
    try:
        server.wait_for_status("BUSY", timeout=10)
        assert_json_error(server.predict({"token": "second"}), 409)
        assert_json_error(server.put("/predictions/while-busy", json={"input": {}}), 409)
        assert server.health()["status"] == "BUSY"
    finally:
        gate.open()

    first = held.result(timeout=30)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "succeeded", first.json()
    assert first.json()["output"] == "ok:held"

    # The slot was released before that reply went out.
    assert server.health()["status"] == "READY"
    assert server.predict_ok({"token": "next"})["output"] == "ok:next"
    # The rejected PUT left nothing behind under its id: it can run now.
    resp = server.put("/predictions/while-busy", json={"input": {"token": "later"}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"] == "ok:later"


def test_back_to_back_requests_on_one_connection_never_get_409(start_server):
    server = start_server(EXAMPLES / "hello")
    statuses = {}
    wrong = []
    with server.session() as session:
        for i in range(200):
            resp = session.post(
                server.url + "/predictions", json={"input": {"name": f"n{i}"}}, timeout=30
            )
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            if resp.status_code == 200 and resp.json()["output"] != f"hello, n{i}":
                wrong.append((i, resp.json()))
    assert statuses == {200: 200}, f"status counts: {statuses}"
    assert wrong == [], wrong[:5]
