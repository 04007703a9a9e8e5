"""Secrets stay with the server: the model's code cannot read the API token or
the webhook token from its environment, webhook URLs reach the logs without
their credentials and query, and a file output under /proc is refused rather
than read by the server (where /proc/self is the server, not the run).
"""

from harness import free_port, wait_until

API_TOKEN = "tok-api-5e1d"
WEBHOOK_TOKEN = "tok-hook-93ab"


def test_the_worker_environment_carries_no_server_tokens(start_server):
    server = start_server(
        "hostile", env={"COG_API_TOKEN": API_TOKEN, "WEBHOOK_AUTH_TOKEN": WEBHOOK_TOKEN}
    )
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    for name in ("COG_API_TOKEN", "WEBHOOK_AUTH_TOKEN"):
        got = server.predict({"mode": "env", "token": name}, headers=auth).json()
        assert got["status"] == "succeeded", got
        assert got["output"] == "<unset>", f"the worker sees {name}"
    # Other variables still reach it.
    got = server.predict({"mode": "env", "token": "PATH"}, headers=auth).json()
    assert got["output"] not in ("<unset>", ""), got


def test_a_proc_file_output_is_refused_not_read_by_the_server(start_server):
    server = start_server(
        "file_outputs",
        env={"COG_PREDICT_TYPE_STUB": "predict.py:given_path", "COG_API_TOKEN": API_TOKEN},
    )
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    for path in ("/proc/self/environ", "/proc/self/cmdline", "/proc/self/status"):
        got = server.predict({"path": path}, headers=auth).json()
        assert got["status"] == "failed", got
        assert API_TOKEN not in str(got)
        assert "/proc or /sys" in got["error"], got["error"]


def test_webhook_urls_are_logged_without_credentials_or_query(start_server):
    server = start_server("basic")
    closed = free_port()
    hook = f"http://user:pw-9f2c@127.0.0.1:{closed}/hook?sig=sig-41d7"
    resp = server.post("/predictions", json={"input": {}, "webhook": hook})
    assert resp.status_code == 200, resp.text

    def logged():
        return "webhook failed" in server.stderr_text()

    wait_until(logged, timeout=15, what="the webhook failure to be logged")
    logs = server.stderr_text() + server.stdout_text()
    assert f"127.0.0.1:{closed}/hook" in logs
    assert "pw-9f2c" not in logs and "sig-41d7" not in logs
