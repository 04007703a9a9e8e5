"""Caps on what the server opens for requests of its own: one prediction's
file inputs download a few at a time, and webhook deliveries across the server
are bounded, so neither thousands of file URLs nor receivers that never
answer can use up the server's file descriptors.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler

from harness import serve_loopback, wait_until

PER_PREDICTION_DOWNLOADS = 8
MAX_DELIVERIES = 64


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Holder:
    """A loopback server whose every request is held until `release`, counting
    the requests it holds at once."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.holding = 0
        self.most = 0
        self.seen = 0
        holder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _hold(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with holder.lock:
                    holder.holding += 1
                    holder.seen += 1
                    holder.most = max(holder.most, holder.holding)
                holder.released.wait(60)
                with holder.lock:
                    holder.holding -= 1
                body = b"x"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _hold  # noqa: N815 - http.server's naming
            do_POST = _hold  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server, self.url = serve_loopback(Handler)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def test_many_file_urls_download_a_few_at_a_time(start_server):
    holder = Holder()
    try:
        server = start_server("file_inputs")
        before = fd_count(server.proc.pid)
        urls = [f"{holder.url}/f{i}.txt" for i in range(300)]
        done = {}
        thread = threading.Thread(
            target=lambda: done.update(server.predict_ok({"files": urls}, timeout=120))
        )
        thread.start()
        wait_until(
            lambda: holder.holding == PER_PREDICTION_DOWNLOADS,
            timeout=15,
            what="the first downloads to be held",
        )
        held_fds = fd_count(server.proc.pid)
        print(f"server fds: {before} idle, {held_fds} with 300 file URLs held")
        assert holder.most == PER_PREDICTION_DOWNLOADS
        # A connection and a file per download in flight, and a little slack.
        assert held_fds - before <= 2 * PER_PREDICTION_DOWNLOADS + 8, (before, held_fds)
        holder.released.set()
        thread.join(120)
        assert done["status"] == "succeeded", done.get("error")
        assert [f["text"] for f in done["output"]["files"]] == ["x"] * 300
        assert holder.most == PER_PREDICTION_DOWNLOADS
    finally:
        holder.close()


def test_webhooks_that_never_answer_cannot_use_up_descriptors(start_server):
    holder = Holder()
    try:
        server = start_server("basic")
        session = server.session()
        before = fd_count(server.proc.pid)
        for i in range(150):
            resp = session.post(
                f"{server.url}/predictions",
                json={"input": {"token": str(i)}, "webhook": f"{holder.url}/hook"},
                timeout=30,
            )
            assert resp.status_code == 200, resp.text
        wait_until(
            lambda: holder.holding == MAX_DELIVERIES,
            timeout=15,
            what="the deliveries to fill the cap",
        )
        held_fds = fd_count(server.proc.pid)
        print(f"server fds: {before} idle, {held_fds} with 150 hanging webhooks")
        assert held_fds - before <= MAX_DELIVERIES + 16, (before, held_fds)
        assert holder.most == MAX_DELIVERIES
        # The server still answers while they hang.
        assert server.predict_ok({"token": "free"})["status"] == "succeeded"
        holder.released.set()
        # Every held prediction's completed webhook arrives in the end.
        wait_until(lambda: holder.seen >= 300, timeout=60, what="start and completed of each")
        assert holder.most == MAX_DELIVERIES
    finally:
        holder.close()
