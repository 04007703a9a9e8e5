"""File inputs: http(s) URLs are downloaded and data: URIs decoded into the
prediction's directory before the run, which sees local paths; failures name
the input and the URL (without its query); other schemes are refused; the
files are gone when the prediction ends.
"""

from __future__ import annotations

import base64
import glob
import http.server
import os
import threading
import time

import pytest


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves /big.bin, /cat.png, /slow (sleeps), anything else 404."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0]
        if path == "/slow":
            time.sleep(3)
        body = {"/cat.png": b"\x89PNG fake cat", "/big.bin": b"x" * 300_000}.get(path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def file_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def data_uri(mime: str, content: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


def test_a_url_input_is_downloaded_and_the_run_sees_a_local_file(start_server, file_server):
    server = start_server("file_inputs")
    got = server.predict_ok({"file": f"{file_server}/cat.png?sig=abc"})
    assert got["status"] == "succeeded", got
    seen = got["output"]["file"]
    assert seen["name"] == "cat.png" and seen["text"].endswith("fake cat"), seen
    assert os.path.isabs(seen["dir"])
    # The prediction shows the input as sent.
    assert got["input"]["file"] == f"{file_server}/cat.png?sig=abc"


def test_data_uri_and_list_inputs_arrive_as_files(start_server, file_server):
    server = start_server("file_inputs")
    got = server.predict_ok(
        {
            "file": data_uri("text/plain", b"hello there"),
            "files": [f"{file_server}/big.bin", data_uri("image/png", b"png!")],
            "handle": data_uri("text/plain", b"opened"),
            "url_text": "https://example.invalid/untouched",
        }
    )
    assert got["status"] == "succeeded", got
    out = got["output"]
    assert out["file"]["text"] == "hello there" and out["file"]["name"].endswith(".txt")
    assert [f["size"] for f in out["files"]] == [300_000, 4]
    assert out["files"][0]["name"] == "big.bin" and out["files"][1]["name"].endswith(".png")
    assert out["handle"] == "opened"
    assert out["url_text"] == "https://example.invalid/untouched"


def test_a_missing_url_fails_the_prediction_naming_the_input_without_the_query(
    start_server, file_server
):
    server = start_server("file_inputs")
    got = server.predict_ok(
        {"files": [data_uri("text/plain", b"ok"), f"{file_server}/nope?token=s3cret"]}
    )
    assert got["status"] == "failed", got
    assert "files[1]" in got["error"] and "/nope" in got["error"] and "404" in got["error"], got
    assert "s3cret" not in got["error"]
    # The server keeps serving.
    assert server.predict_ok({"file": data_uri("text/plain", b"again")})["status"] == "succeeded"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "/etc/passwd"])
def test_other_schemes_are_refused(start_server, url):
    server = start_server("file_inputs")
    got = server.predict_ok({"file": url})
    assert got["status"] == "failed", got
    assert "http" in got["error"], got["error"]


def test_a_slow_download_hits_the_timeout(start_server, file_server):
    server = start_server("file_inputs", env={"COG_DOWNLOAD_TIMEOUT": "0.5"})
    began = time.monotonic()
    got = server.predict_ok({"file": f"{file_server}/slow"})
    assert got["status"] == "failed" and "timed out" in got["error"], got
    assert time.monotonic() - began < 2.5


def test_an_oversized_download_is_refused(start_server, file_server):
    server = start_server("file_inputs", env={"COG_DOWNLOAD_MAX_BYTES": "1000"})
    got = server.predict_ok({"file": f"{file_server}/big.bin"})
    assert got["status"] == "failed" and "limit" in got["error"], got


def test_input_files_are_gone_after_the_prediction(start_server, file_server):
    server = start_server("file_inputs")
    got = server.predict_ok({"file": f"{file_server}/cat.png"})
    assert got["status"] == "succeeded", got
    downloaded = os.path.join(got["output"]["file"]["dir"], got["output"]["file"]["name"])
    assert not os.path.exists(downloaded)
    leftovers = glob.glob(os.path.join(os.path.dirname(downloaded), "..", "..", "*"))
    assert leftovers == [], leftovers
