"""The HTTP surface around predictions: the discovery document at `/`, the
health-check body when ready, and malformed requests (bad JSON 400, non-object
input 422, wrong content type 415), each answered with a JSON `detail` while
the server keeps serving.
"""

import pytest
from harness import assert_json_error, parse_timestamp

DISCOVERY_KEYS = {
    "cog_version",
    "openapi_url",
    "healthcheck_url",
    "predictions_url",
    "predictions_idempotent_url",
    "predictions_cancel_url",
    "shutdown_url",
}


def test_root_serves_the_discovery_document(start_server):
    server = start_server("basic")
    resp = server.get("/")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert set(doc) >= DISCOVERY_KEYS, f"missing {DISCOVERY_KEYS - set(doc)}"
    for key in DISCOVERY_KEYS:
        assert isinstance(doc[key], str) and doc[key], (key, doc[key])
    assert doc["healthcheck_url"].endswith("/health-check"), doc
    assert doc["predictions_url"].endswith("/predictions"), doc
    assert doc["openapi_url"].endswith("/openapi.json"), doc
    assert doc["shutdown_url"].endswith("/shutdown"), doc
    # No train: configured, so no training routes advertised.
    assert not [k for k in doc if k.startswith("trainings_")], doc


def test_health_check_when_ready_has_status_setup_and_version(start_server):
    server = start_server("basic")
    health = server.health()
    assert health["status"] == "READY", health
    setup = health["setup"]
    assert set(setup) >= {"started_at", "completed_at", "status", "logs"}, setup
    assert setup["status"] == "succeeded", setup
    assert parse_timestamp(setup["started_at"]) <= parse_timestamp(setup["completed_at"])
    assert "basic: setup done" in setup["logs"], setup
    assert isinstance(health["version"], dict), health


@pytest.mark.parametrize(
    "data, content_type, status",
    [
        pytest.param('{"input": {"mode": ', "application/json", 400, id="truncated-json"),
        pytest.param("not json at all", "application/json", 400, id="not-json"),
        pytest.param('{"input": "notanobject"}', "application/json", 422, id="input-is-a-string"),
        pytest.param('{"input": [1]}', "application/json", 422, id="input-is-a-list"),
        pytest.param("[1, 2]", "application/json", 422, id="body-is-a-list"),
        pytest.param('{"input": {}}', "text/plain", 415, id="text-plain"),
    ],
)
def test_malformed_request_gets_json_error_and_server_keeps_serving(
    start_server, data, content_type, status
):
    server = start_server("basic")
    for method, path in (("POST", "/predictions"), ("PUT", "/predictions/malformed")):
        resp = server.request(method, path, data=data, headers={"Content-Type": content_type})
        assert_json_error(resp, status)

    assert server.health()["status"] == "READY"
    prediction = server.predict_ok({"token": "still-here"})
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == "ok:still-here"
