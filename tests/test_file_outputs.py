"""File outputs and large outputs: the server reads each file the run returned
from disk and sends it, inline as a data: URI or, with --upload-url (or the
request's output_file_prefix), by PUT to BASE/<name>, the output then being the
reply's Location without its query, else the PUT URL. Lists keep their order,
iterators send each file as it is yielded, failures name the file and the URL,
transient failures are retried. Outputs and inputs too large for one protocol
frame travel through files; a 100 MiB file output does not make the server
hold it twice; the prediction's files are gone when it ends.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from pathlib import Path

import pytest
from harness import UploadReceiver, in_background, proc_status_bytes, wait_until

MODEL = "file_outputs"
MIB = 1024 * 1024


def content(name: str, size: int) -> bytes:
    """What the model writes into a file `name` of `size` bytes (its `content`)."""
    seed = (name.encode() + b":") * (size // (len(name) + 1) + 1)
    return seed[:size]


def serve(start_server, run: str, *args: str, env: dict[str, str] | None = None):
    return start_server(
        MODEL, env={"COG_PREDICT_TYPE_STUB": f"predict.py:{run}", **(env or {})}, args=args
    )


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def prediction_dirs(tmpdir: Path) -> list[Path]:
    return list(tmpdir.glob("cogd-*/predictions/*"))


def test_a_path_output_is_inlined_as_a_data_uri(start_server):
    server = serve(start_server, "one_path")
    got = server.predict_ok({"name": "note.txt", "size": 40})
    assert got["status"] == "succeeded", got
    assert got["output"] == data_uri("text/plain", content("note.txt", 40))


def test_files_inside_an_object_are_sent_in_place(start_server):
    server = serve(start_server, "in_object")
    got = server.predict_ok()
    assert got["status"] == "succeeded", got
    assert got["output"] == {
        "caption": "c",
        "image": data_uri("image/png", content("image.png", 10)),
        "extra": [data_uri("text/plain", content("a.txt", 3))],
    }


def test_an_uploaded_file_output_is_the_location_without_its_query(
    start_server, upload_receiver: UploadReceiver
):
    upload_receiver.location = lambda path: f"https://cdn.example/files{path}?sig=abc#x"
    server = serve(start_server, "one_path", "--upload-url", upload_receiver.url("/uploads"))
    got = server.predict_ok({"name": "note.txt", "size": 40})
    assert got["status"] == "succeeded", got
    assert got["output"] == "https://cdn.example/files/uploads/note.txt"
    [upload] = upload_receiver.uploads
    assert upload.path == "/uploads/note.txt"
    assert upload.content_type == "text/plain"
    assert upload.body == content("note.txt", 40)


def test_without_a_location_the_output_is_the_put_url_and_file_objects_upload_too(
    start_server, upload_receiver
):
    server = serve(start_server, "file_object", "--upload-url", upload_receiver.url("/up/"))
    got = server.predict_ok()
    assert got["status"] == "succeeded", got
    assert got["output"] == upload_receiver.url("/up/page.html")
    [upload] = upload_receiver.uploads
    assert (upload.content_type, upload.body) == ("text/html", b"<p>hi</p>")


def test_output_file_prefix_sends_files_there_even_without_upload_url(
    start_server, upload_receiver
):
    server = serve(start_server, "one_path")
    resp = server.post(
        "/predictions",
        json={"input": {"name": "a.txt"}, "output_file_prefix": upload_receiver.url("/p/run1")},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"] == upload_receiver.url("/p/run1/a.txt")
    assert [u.path for u in upload_receiver.uploads] == ["/p/run1/a.txt"]
    # Not a URL: refused before anything runs.
    resp = server.post("/predictions", json={"input": {}, "output_file_prefix": "/tmp/x"})
    assert resp.status_code == 422, resp.text


def test_a_list_of_uploaded_files_keeps_the_order_returned(start_server, upload_receiver):
    """Items of a list are uploaded as output.<index>.<ext>: files that share a
    name (here all of them) never overwrite each other."""
    # The first file's upload is the slowest, so it finishes last.
    upload_receiver.on_upload = lambda u: time.sleep(0.5 if u.path.endswith(".0.txt") else 0)
    server = serve(start_server, "list_of_paths", "--upload-url", upload_receiver.url("/u"))
    got = server.predict_ok({"count": 4, "size": 5})
    assert got["status"] == "succeeded", got
    names = [f"output.{i}.txt" for i in range(4)]
    assert got["output"] == [upload_receiver.url(f"/u/{n}") for n in names]
    assert upload_receiver.uploads[-1].path == "/u/output.0.txt", upload_receiver.uploads
    assert {u.path: u.body for u in upload_receiver.uploads} == {
        f"/u/output.{i}.txt": content("part.txt", 5 + i) for i in range(4)
    }


def test_an_iterator_uploads_each_file_as_it_is_yielded(start_server, upload_receiver, tmp_path):
    # The run waits after each file until the receiver has it.
    def mark_sent(upload) -> None:
        index = upload.path.split(".")[-2]
        (tmp_path / f"sent-{index}").touch()

    upload_receiver.on_upload = mark_sent
    server = serve(start_server, "iterate", "--upload-url", upload_receiver.url("/it"))
    got = server.predict_ok({"count": 3, "gate_dir": str(tmp_path)})
    assert got["status"] == "succeeded", got
    assert got["output"] == [upload_receiver.url(f"/it/output.{i}.txt") for i in range(3)]


def test_an_upload_that_fails_fails_the_prediction_naming_the_file_and_the_url(
    start_server, upload_receiver
):
    upload_receiver.respond = lambda path: 403
    host = upload_receiver.base_url.removeprefix("http://")
    base = f"http://user:pw@{host}/uploads?token=s3cret"
    server = serve(start_server, "one_path", "--upload-url", base)
    got = server.predict_ok({"name": "note.txt"})
    assert got["status"] == "failed", got
    error = got["error"]
    assert "note.txt" in error and f"{host}/uploads/note.txt" in error and "403" in error, error
    assert "s3cret" not in error and "pw" not in error, error
    assert upload_receiver.attempts == 1, "a 403 is not retried"


def test_transient_503s_are_retried(start_server, upload_receiver):
    upload_receiver.fail_first(2)
    server = serve(start_server, "one_path", "--upload-url", upload_receiver.url("/r"))
    got = server.predict_ok({"name": "x.txt"})
    assert got["status"] == "succeeded", got
    assert got["output"] == upload_receiver.url("/r/x.txt")
    assert upload_receiver.attempts == 3


def test_an_upload_answered_408_is_retried_as_a_webhook_is(start_server, upload_receiver):
    """Uploads and webhooks share one retry policy: a receiver that timed out
    waiting for the request (408) gets it again."""
    upload_receiver.fail_first(1, 408)
    server = serve(start_server, "one_path", "--upload-url", upload_receiver.url("/r"))
    got = server.predict_ok({"name": "x.txt"})
    assert got["status"] == "succeeded", got
    assert got["output"] == upload_receiver.url("/r/x.txt")
    assert upload_receiver.attempts == 2


def test_a_cancel_during_a_slow_upload_ends_the_prediction_at_once(start_server, upload_receiver):
    arrived = threading.Event()
    release = threading.Event()

    def hold(upload) -> None:
        arrived.set()
        release.wait(30)

    upload_receiver.on_upload = hold
    server = serve(start_server, "one_path", "--upload-url", upload_receiver.url("/slow"))
    try:
        held = in_background(server.put, "/predictions/slow", json={"input": {}}, timeout=30)
        assert arrived.wait(15), "the upload never arrived"
        began = time.monotonic()
        assert server.post("/predictions/slow/cancel").status_code == 200
        got = held.result(timeout=30).json()
        assert got["status"] == "canceled", got
        assert time.monotonic() - began < 3
    finally:
        release.set()


def test_a_symlinked_output_is_read_through_its_link_and_devices_are_refused(start_server):
    server = serve(start_server, "symlink")
    got = server.predict_ok()
    assert got["status"] == "succeeded", got
    assert got["output"] == data_uri("text/plain", content("target.txt", 12))
    server = serve(start_server, "symlink_to_device")
    got = server.predict_ok()
    assert got["status"] == "failed", got
    assert "not a file" in got["error"] or "not a regular file" in got["error"], got


@pytest.mark.parametrize("sent", ["uploaded", "inline"])
def test_a_100_mib_file_output_is_not_held_twice(start_server, upload_receiver, sent):
    args = ("--upload-url", upload_receiver.url("/big")) if sent == "uploaded" else ()
    server = serve(start_server, "big_path", *args)
    assert server.predict_ok({"mib": 1})["status"] == "succeeded"
    before = proc_status_bytes(server.proc.pid, "VmHWM")
    resp = server.predict({"mib": 100}, timeout=120)
    assert resp.status_code == 200
    grown = proc_status_bytes(server.proc.pid, "VmHWM") - before
    got = resp.json()
    assert got["status"] == "succeeded", got["error"]
    zeros = hashlib.sha256(bytes(100 * MIB)).hexdigest()
    if sent == "uploaded":
        [_, upload] = upload_receiver.uploads
        assert (upload.size, upload.sha256) == (100 * MIB, zeros)
        assert grown < 32 * MIB, f"the server grew by {grown / MIB:.0f} MiB"
    else:
        prefix = "data:application/octet-stream;base64,"
        assert got["output"].startswith(prefix)
        decoded = base64.b64decode(got["output"][len(prefix) :])
        assert hashlib.sha256(decoded).hexdigest() == zeros
        # The base64 text (133 MiB) is built once, in place, and sent from there.
        assert grown < 1.6 * 100 * MIB, f"the server grew by {grown / MIB:.0f} MiB"


def test_an_input_and_output_over_the_frame_limit_round_trip(start_server):
    server = serve(start_server, "echo")
    text = "ab" * (9 * MIB // 2)
    got = server.predict_ok({"text": text}, timeout=60)
    assert got["status"] == "succeeded", got["error"]
    assert got["output"] == text


def long_string(kind: str, size: int) -> str:
    """The model's `long_string`: what a test expects to receive."""
    unit = "x" if kind == "ascii" else 'é漢"\\\n\x00\x1f\u2028a'
    return (unit * (size // len(unit) + 1))[:size]


# Long strings (64 Ki characters and more) are escaped by the worker's Rust
# side; 100,000 characters keep the output inline, 3 MiB make it a file.
@pytest.mark.parametrize("size", [100_000, 3 * MIB])
def test_long_strings_of_every_kind_arrive_as_returned(start_server, size):
    server = serve(start_server, "long_strings")
    got = server.predict_ok({"size": size}, timeout=60)
    assert got["status"] == "succeeded", got["error"]
    assert got["output"] == {
        "mixed": long_string("mixed", size),
        "short": 'a "short" one é',
        "items": [long_string("ascii", size), "b", {"deep": long_string("mixed", size + 1)}],
        "file": data_uri("text/plain", content("note.txt", 5)),
    }


@pytest.mark.parametrize("size", [100_000, 7 * MIB])
def test_a_streamed_long_string_arrives_as_yielded(start_server, size):
    server = serve(start_server, "stream_long_strings")
    got = server.predict_ok({"size": size}, timeout=60)
    assert got["status"] == "succeeded", got["error"]
    # Past 6 MiB each long chunk comes in a memory file attached to its
    # message: two in a row must arrive in the order they were yielded.
    assert got["output"] == [
        "small",
        long_string("mixed", size),
        long_string("ascii", size),
        "after",
    ]


def test_a_large_input_that_json_must_escape_round_trips(start_server):
    server = serve(start_server, "echo")
    text = long_string("mixed", 7 * MIB)
    got = server.predict_ok({"text": text}, timeout=60)
    assert got["status"] == "succeeded", got["error"]
    assert got["output"] == text
    assert got["input"] == {"text": text}


def test_a_20_mib_string_output_arrives_whole_and_leaves_no_file(start_server, short_tmpdir):
    server = serve(start_server, "long_text", env={"TMPDIR": str(short_tmpdir)})
    got = server.predict_ok({"mib": 20}, timeout=60)
    assert got["status"] == "succeeded", got["error"]
    assert got["output"] == "x" * (20 * MIB)
    # It went through a memory file attached to the worker's message: nothing
    # was written to the prediction's directory, and nothing is left there.
    assert prediction_dirs(short_tmpdir) == []


@pytest.mark.parametrize(
    "run, status", [("file_object", "succeeded"), ("file_then_fail", "failed")]
)
def test_the_prediction_files_are_gone_when_it_ends(start_server, short_tmpdir, run, status):
    server = serve(start_server, run, env={"TMPDIR": str(short_tmpdir)})
    got = server.predict_ok()
    assert got["status"] == status, got
    assert prediction_dirs(short_tmpdir) == []


def test_the_prediction_files_are_gone_after_a_cancel(start_server, short_tmpdir, gate):
    server = serve(start_server, "file_then_wait", env={"TMPDIR": str(short_tmpdir)})
    held = in_background(
        server.put, "/predictions/held", json={"input": {"gate": str(gate)}}, timeout=30
    )
    # The file it yielded is sent; the run waits.
    wait_until(
        lambda: server.get("/predictions/held").json().get("output"),
        timeout=15,
        what="the yielded file",
    )
    assert prediction_dirs(short_tmpdir), "the prediction's directory exists while it runs"
    assert server.post("/predictions/held/cancel").status_code == 200
    got = held.result(timeout=30).json()
    assert got["status"] == "canceled", got
    assert got["output"] == [data_uri("text/html", b"<p>hi</p>")]
    wait_until(lambda: not prediction_dirs(short_tmpdir), timeout=5, what="no directories")


def test_a_hung_upload_receiver_fails_the_prediction_and_frees_the_slot(
    start_server, upload_receiver
):
    """A receiver that takes the PUT and never answers: each attempt gives up
    after COG_UPLOAD_TIMEOUT, the prediction fails naming the upload, and the
    slot is free for the next request."""
    release = threading.Event()
    upload_receiver.on_upload = lambda upload: release.wait(60)
    server = serve(start_server, "one_path", env={"COG_UPLOAD_TIMEOUT": "0.5"})
    try:
        started = time.monotonic()
        resp = server.post(
            "/predictions",
            json={"input": {"name": "a.txt"}, "output_file_prefix": upload_receiver.url("/hung")},
            timeout=60,
        )
        took = time.monotonic() - started
        assert resp.status_code == 200, resp.text
        got = resp.json()
        assert got["status"] == "failed", got
        assert "cannot upload output file a.txt" in got["error"], got["error"]
        assert "timed out" in got["error"], got["error"]
        assert upload_receiver.attempts == 5, "each attempt timed out and was retried"
        # Five attempts of 0.5 s plus the backoff between them.
        assert took < 15, f"the prediction took {took:.1f} s"
        after = server.predict_ok({"name": "b.txt", "size": 3})
        assert after["status"] == "succeeded", after
    finally:
        release.set()
