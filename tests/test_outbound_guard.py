"""Where the server's own requests may go. The server's own listen address is
never a webhook or upload target (a webhook at its own /shutdown must not stop
it), whether named by address, by a host name or through a redirect. With
COG_BLOCK_PRIVATE_NETWORKS=1, file inputs, webhooks and uploads to loopback
(and private, link-local) addresses are refused with an error that says why.
Tests can only reach loopback, so that is what they point at.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import pytest
from harness import serve_loopback, wait_until

BLOCK = {"COG_BLOCK_PRIVATE_NETWORKS": "1"}
FILE_OUTPUTS = {"COG_PREDICT_TYPE_STUB": "predict.py:one_path"}


class _Files(BaseHTTPRequestHandler):
    """Answers every GET with a small file, and counts them."""

    served = 0
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        with _Files.lock:
            _Files.served += 1
        body = b"local secret"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_files():
    server, url = serve_loopback(_Files)
    _Files.served = 0
    yield url
    server.shutdown()
    server.server_close()


def alive_and_ready(server) -> None:
    assert server.proc.poll() is None, "the server stopped"
    assert server.health()["status"] == "READY"


def test_with_private_networks_blocked_a_loopback_file_input_is_refused(start_server, local_files):
    server = start_server("file_inputs", env=BLOCK)
    port = urlsplit(local_files).port
    for url in (f"{local_files}/a.txt", f"http://localhost:{port}/a.txt"):
        got = server.predict_ok({"file": url})
        assert got["status"] == "failed", got
        assert "refused to connect" in got["error"], got["error"]
        assert "COG_BLOCK_PRIVATE_NETWORKS" in got["error"], got["error"]
    assert _Files.served == 0
    # data: URIs need no network and still arrive.
    got = server.predict_ok({"file": "data:text/plain;base64,aGk="})
    assert got["status"] == "succeeded", got


def test_without_the_flag_a_loopback_file_input_is_fetched(start_server, local_files):
    server = start_server("file_inputs")
    got = server.predict_ok({"file": f"{local_files}/a.txt"})
    assert got["status"] == "succeeded", got
    assert got["output"]["file"]["text"] == "local secret"


def test_with_private_networks_blocked_loopback_webhooks_and_uploads_are_refused(
    start_server, webhook_receiver, upload_receiver
):
    server = start_server("file_outputs", env={**BLOCK, **FILE_OUTPUTS})
    resp = server.post(
        "/predictions",
        json={
            "input": {"name": "a.txt"},
            "webhook": webhook_receiver.url(),
            "output_file_prefix": upload_receiver.url("/up"),
        },
    )
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["status"] == "failed", got
    assert "cannot upload output file a.txt" in got["error"], got["error"]
    assert "COG_BLOCK_PRIVATE_NETWORKS" in got["error"], got["error"]
    wait_until(
        lambda: "webhook refused by the address policy" in server.stderr_text(),
        timeout=10,
        what="the webhook's refusal in the logs",
    )
    assert upload_receiver.attempts == 0
    assert webhook_receiver.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0"])
def test_a_webhook_at_the_servers_own_shutdown_is_refused(start_server, host):
    server = start_server("basic")
    port = urlsplit(server.url).port
    resp = server.post(
        "/predictions", json={"input": {}, "webhook": f"http://{host}:{port}/shutdown"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "succeeded"
    wait_until(
        lambda: server.stderr_text().count("the server's own address") >= 2,
        timeout=10,
        what="the start and completed webhooks to be refused",
    )
    alive_and_ready(server)


def test_a_redirect_to_the_servers_own_shutdown_is_not_followed(start_server):
    server = start_server("basic")
    own = server.url

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", f"{own}/shutdown")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    redirector, url = serve_loopback(Redirect)
    try:
        resp = server.post("/predictions", json={"input": {}, "webhook": f"{url}/hook"})
        assert resp.status_code == 200, resp.text
        wait_until(
            lambda: "the server's own address" in server.stderr_text(),
            timeout=10,
            what="the redirect's refusal in the logs",
        )
        alive_and_ready(server)
    finally:
        redirector.shutdown()
        redirector.server_close()


def test_an_upload_prefix_at_the_server_itself_fails_the_prediction(start_server):
    server = start_server("file_outputs", env=FILE_OUTPUTS)
    resp = server.post(
        "/predictions",
        json={"input": {"name": "a.txt"}, "output_file_prefix": f"{server.url}/shutdown"},
    )
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["status"] == "failed", got
    assert "the server's own address" in got["error"], got["error"]
    alive_and_ready(server)
