"""Access control: with COG_API_TOKEN set, every route but the health check
needs `Authorization: Bearer <token>` (401 otherwise, with a JSON body), and the
token never shows up in the server's logs.
"""

from harness import assert_json_error

TOKEN = "tok-7c1f9e2a"


def test_a_token_is_required_and_accepted(start_server):
    server = start_server("echo", env={"COG_API_TOKEN": TOKEN})
    assert_json_error(server.predict({"text": "hi"}), 401)
    assert_json_error(
        server.predict({"text": "hi"}, headers={"Authorization": "Bearer wrong"}), 401
    )
    assert_json_error(server.get("/openapi.json"), 401)
    # The probe stays open.
    assert server.get("/health-check").status_code == 200

    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = server.predict({"text": "hi"}, headers=auth)
    assert resp.status_code == 200 and resp.json()["output"]["length"] == 2, resp.text
    assert TOKEN not in server.stderr_text() + server.stdout_text()


def test_without_a_token_the_api_is_open(start_server):
    server = start_server("echo")
    assert server.predict_ok({"text": "hi"})["status"] == "succeeded"
