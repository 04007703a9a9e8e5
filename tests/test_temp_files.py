"""Per-prediction temp directories ($TMPDIR/cogd-*/predictions/<id>/) exist
while a prediction that needs disk runs, and are removed when it ends,
whether it succeeded, failed, or its worker died.
"""

import pytest
from harness import in_background, wait_until


@pytest.mark.parametrize(
    "mode, status",
    [("ok", "succeeded"), ("raise", "failed"), ("exit", "failed")],
)
def test_prediction_temp_dir_exists_during_the_run_and_is_removed_after(
    start_server, gate, short_tmpdir, mode, status
):
    """A run gets a directory only when it needs disk (here: a file input,
    decoded into it); it is removed however the run ends."""
    server = start_server("file_input_held", env={"TMPDIR": str(short_tmpdir)})
    prediction_id = f"tmpdir-{mode}"

    def prediction_dirs():
        return list(short_tmpdir.glob(f"cogd-*/predictions/{prediction_id}"))

    held = in_background(
        server.put,
        f"/predictions/{prediction_id}",
        json={"input": {"mode": mode, "gate": str(gate), "file": "data:text/plain;base64,aGk="}},
    )
    try:
        found = wait_until(prediction_dirs, timeout=15, what=f"a temp dir for {prediction_id}")
        assert found[0].is_dir(), found
    finally:
        gate.open()

    resp = held.result(timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == status, resp.json()

    wait_until(lambda: not prediction_dirs(), timeout=5, what=f"{found[0]} to be removed")
    leftovers = list(short_tmpdir.glob("cogd-*/predictions/*"))
    assert leftovers == [], leftovers


def test_a_large_input_travels_in_memory_and_needs_no_directory(start_server, gate, short_tmpdir):
    """An input too large for one frame goes to the worker in a memory file
    attached to the frame: the run never gets a directory on disk."""
    server = start_server("basic", env={"TMPDIR": str(short_tmpdir)})
    token = "t" * (7 << 20)
    held = in_background(
        server.put,
        "/predictions/large-input",
        json={"input": {"gate": str(gate), "token": token}},
    )
    try:
        wait_until(
            lambda: server.get("/predictions/large-input").json().get("status") == "processing",
            timeout=15,
            what="the run to start",
        )
        assert list(short_tmpdir.glob("cogd-*/predictions/*")) == []
    finally:
        gate.open()
    resp = held.result(timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"] == f"ok:{token}"
