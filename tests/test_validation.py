"""Inputs at the edge: every kind of invalid input is a 422 listing every
problem, defaults and optional inputs, coercion to the declared Python types,
unions, and secrets that never reach a log or an error.

The coercion model reports, for each input, the Python type and value its run
received.
"""

from __future__ import annotations

import pytest
from harness import assert_json_error, in_background, log_lines, wait_until

SECRET = "s3cr3t-value-that-must-not-leak"


def errors_of(resp) -> list[dict]:
    body = assert_json_error(resp, 422)
    detail = body["detail"]
    assert isinstance(detail, list) and detail, body
    for entry in detail:
        assert set(entry) >= {"loc", "msg", "type"}, entry
        assert entry["loc"][:2] == ["body", "input"], entry
    return detail


def fields_and_types(detail: list[dict]) -> list[tuple[str, str]]:
    return [(e["loc"][2], e["type"]) for e in detail]


@pytest.fixture
def coercion(start_server):
    return start_server("coercion")


@pytest.mark.parametrize(
    ("sent", "field", "kind"),
    [
        ({"text": "ok", "count": "five"}, "count", "int_type"),  # wrong type
        ({"text": "ok", "flag": "yes"}, "flag", "bool_type"),
        ({"text": "ok", "numbers": [1, "x"]}, "numbers", "float_type"),
        ({}, "text", "missing"),  # missing required input
        ({"text": "ok", "colour": "red"}, "colour", "extra_forbidden"),  # unknown input
        ({"text": "ok", "count": 0}, "count", "greater_than_equal"),  # bounds
        ({"text": "ok", "ratio": 1.5}, "ratio", "less_than_equal"),
        ({"text": "a"}, "text", "string_too_short"),  # length
        ({"text": "far too long"}, "text", "string_too_long"),
        ({"text": "ok", "code": "1ab"}, "code", "string_pattern_mismatch"),  # pattern
        ({"text": "ok", "color": "blue"}, "color", "enum"),  # choices
        ({"text": "ok", "size": 4}, "size", "enum"),
        ({"text": "ok", "count": None}, "count", "int_type"),  # null for a non-optional
        ({"text": "ok", "either": [1]}, "either", "union_type"),
    ],
)
def test_each_invalid_input_is_a_422_naming_the_field(coercion, sent, field, kind):
    detail = errors_of(coercion.predict(sent))
    assert fields_and_types(detail) == [(field, kind)], detail


def test_one_request_with_three_errors_gets_three_entries(coercion):
    detail = errors_of(coercion.predict({"text": "ok", "count": 99, "color": "blue", "nope": 1}))
    assert fields_and_types(detail) == [
        ("count", "less_than_equal"),
        ("color", "enum"),
        ("nope", "extra_forbidden"),
    ]


def test_every_kind_of_error_is_reported_together(coercion):
    sent = {"count": "x", "ratio": 2, "code": "!", "size": 9, "numbers": ["a", 1, "b"], "z": 0}
    detail = errors_of(coercion.predict(sent))
    assert fields_and_types(detail) == [
        ("text", "missing"),
        ("count", "int_type"),
        ("ratio", "less_than_equal"),
        ("code", "string_pattern_mismatch"),
        ("size", "enum"),
        ("numbers", "float_type"),
        ("numbers", "float_type"),
        ("z", "extra_forbidden"),
    ]
    # Errors inside a list point at the item.
    assert [e["loc"] for e in detail if e["loc"][2] == "numbers"] == [
        ["body", "input", "numbers", 0],
        ["body", "input", "numbers", 2],
    ]


def test_messages_say_what_was_expected(coercion):
    detail = errors_of(coercion.predict({"text": "ok", "count": 11, "color": "blue"}))
    messages = {e["loc"][2]: e["msg"] for e in detail}
    assert messages["count"] == "Input should be less than or equal to 10"
    assert messages["color"] == "Input should be 'red' or 'green'"


def test_an_invalid_put_is_a_422_too_and_creates_nothing(coercion):
    resp = coercion.put("/predictions/bad-one", json={"input": {"text": 5}})
    errors_of(resp)
    resp = coercion.put("/predictions/bad-one", json={"input": {"text": "ok"}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "succeeded"


def test_validation_happens_before_a_slot_is_taken(coercion, gate):
    held = in_background(coercion.predict, {"text": "ok", "gate": str(gate)})
    wait_until(lambda: coercion.health()["status"] == "BUSY", 30, "the run to hold the slot")
    # Busy, yet a bad input is told what is wrong rather than "busy".
    errors_of(coercion.predict({"text": 1}))
    assert coercion.predict({"text": "ok"}).status_code == 409
    gate.open()
    assert held.result(timeout=30).status_code == 200


def test_defaults_are_applied_and_shown(coercion):
    prediction = coercion.predict_ok({"text": "ok"})
    assert prediction["status"] == "succeeded", prediction
    got = prediction["output"]
    assert got["count"] == {"type": "int", "value": 5}
    assert got["ratio"] == {"type": "float", "value": 0.5}
    assert got["color"] == {"type": "str", "value": "red"}
    assert got["numbers"]["value"] == [
        {"type": "float", "value": 1.0},
        {"type": "float", "value": 2.0},
    ]
    # The prediction's input shows what the run got, defaults included.
    assert prediction["input"]["count"] == 5 and prediction["input"]["color"] == "red"


def test_optional_inputs_left_out_arrive_as_none_and_an_explicit_null_is_refused(coercion):
    got = coercion.predict_ok({"text": "ok"})["output"]
    for name in ("maybe", "maybe_text", "image", "document", "token"):
        assert got[name] == {"type": "NoneType", "value": None}, name
    # An explicit null is refused, optional or not, as Cog's validator refuses it.
    resp = coercion.predict({"text": "ok", "maybe": None, "maybe_text": None})
    assert resp.status_code == 422, resp.text
    assert sorted(e["loc"][-1] for e in resp.json()["detail"]) == ["maybe", "maybe_text"]
    got = coercion.predict_ok({"text": "ok", "maybe": 4})["output"]
    assert got["maybe"] == {"type": "int", "value": 4}


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (True, {"type": "bool", "value": True}),
        (7, {"type": "int", "value": 7}),
        (7.5, {"type": "float", "value": 7.5}),
        ("seven", {"type": "str", "value": "seven"}),
    ],
)
def test_unions_pick_the_most_specific_member(coercion, sent, expected):
    got = coercion.predict_ok({"text": "ok", "either": sent})["output"]
    assert got["either"] == expected


def test_values_arrive_as_the_declared_python_types(coercion):
    got = coercion.predict_ok(
        {
            "text": "ok",
            "ratio": 1,  # an int where a float is declared
            "numbers": [3, 4.5],
            "image": "data:image/png;base64,aGk=",
            "images": ["data:text/plain;base64,aGk=", "data:text/plain;base64,aG8="],
            "document": "data:text/plain;base64,aGVsbG8=",
            "flag": True,
        }
    )["output"]
    # A JSON int reaches a float input as the int, as Cog's runtime hands it over.
    assert got["ratio"] == {"type": "int", "value": 1}
    assert [n["type"] for n in got["numbers"]["value"]] == ["int", "float"]
    # File inputs arrive as local Paths: the server decoded (or downloaded) them.
    assert got["image"]["type"] == "Path"
    assert got["image"]["value"].endswith(".png"), got["image"]
    assert [i["type"] for i in got["images"]["value"]] == ["Path", "Path"]
    assert got["document"]["value"] == "hello"  # an open file on the local copy
    assert got["flag"] == {"type": "bool", "value": True}


def test_a_secret_reaches_the_run_but_never_a_log_a_reply_or_an_error(coercion):
    prediction = coercion.predict_ok({"text": "ok", "token": SECRET})
    token = prediction["output"]["token"]
    assert token == {"type": "Secret", "value": "**********", "length": len(SECRET)}
    # The run printed the Secret (str and repr): the logs show it masked.
    assert log_lines(prediction) == ["using token ********** (Secret(**********))"]
    assert prediction["input"]["token"] == "**********"
    # An invalid request carrying the secret: the error must not echo it.
    resp = coercion.predict({"text": SECRET, "token": SECRET, "code": SECRET})
    assert resp.status_code == 422
    assert SECRET not in resp.text
    resp = coercion.predict({"text": "ok", "token": 123456789})
    assert resp.status_code == 422 and "123456789" not in resp.text
    assert SECRET not in coercion.stderr_text() + coercion.stdout_text()
