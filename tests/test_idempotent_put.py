"""PUT /predictions/{id} is idempotent: the same id never runs twice, whether
the duplicates arrive together, during the run, or after it finished; and a
body id that differs from the path id is rejected with 422.

The counter model appends one line per run to a file, so runs are counted
from outside, and its output carries a per-run nonce, so equal outputs mean
the same run.
"""

import threading

from harness import assert_json_error, in_background, parse_timestamp


def runs_recorded(counter_file):
    return counter_file.read_text().splitlines() if counter_file.exists() else []


def test_concurrent_identical_puts_run_once_and_return_the_same_prediction(start_server, tmp_path):
    server = start_server("counter")
    counter_file = tmp_path / "runs.txt"
    body = {"input": {"counter_file": str(counter_file), "name": "same", "sleep": 1.0}}

    # All four requests leave at once: duplicates arriving before the first
    # run starts and while it runs (it lasts a second) must all attach to it.
    parallel = 4
    barrier = threading.Barrier(parallel)

    def put():
        barrier.wait(timeout=10)
        return server.put("/predictions/idem-concurrent", json=body, timeout=30)

    futures = [in_background(put) for _ in range(parallel)]
    responses = [f.result(timeout=40) for f in futures]

    for resp in responses:
        assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    predictions = [r.json() for r in responses]
    for p in predictions:
        assert p["id"] == "idem-concurrent", p
        assert p["status"] == "succeeded", p
    outputs = {p["output"] for p in predictions}
    assert len(outputs) == 1, f"different runs answered: {outputs}"
    assert len({p["created_at"] for p in predictions}) == 1, predictions
    assert len(runs_recorded(counter_file)) == 1, runs_recorded(counter_file)


def test_put_after_completion_returns_the_finished_prediction_without_rerunning(
    start_server, tmp_path
):
    server = start_server("counter")
    counter_file = tmp_path / "runs.txt"
    body = {"input": {"counter_file": str(counter_file), "sleep": 0.1}}

    first = server.put("/predictions/idem-again", json=body)
    assert first.status_code == 200, first.text
    first = first.json()
    assert first["status"] == "succeeded", first

    again = server.put("/predictions/idem-again", json=body)
    assert again.status_code == 200, again.text
    again = again.json()
    assert again["id"] == "idem-again"
    assert again["status"] == "succeeded", again
    assert again["output"] == first["output"]
    assert parse_timestamp(again["created_at"]) == parse_timestamp(first["created_at"])
    assert parse_timestamp(again["completed_at"]) == parse_timestamp(first["completed_at"])
    assert len(runs_recorded(counter_file)) == 1, runs_recorded(counter_file)

    # A different id is a different prediction and does run.
    other = server.put("/predictions/idem-other", json=body)
    assert other.status_code == 200, other.text
    assert other.json()["output"] != first["output"]
    assert len(runs_recorded(counter_file)) == 2


def test_put_with_body_id_differing_from_path_id_is_rejected(start_server, tmp_path):
    server = start_server("counter")
    counter_file = tmp_path / "runs.txt"
    resp = server.put(
        "/predictions/path-id",
        json={"id": "body-id", "input": {"counter_file": str(counter_file), "sleep": 0}},
    )
    assert_json_error(resp, 422)
    assert runs_recorded(counter_file) == []

    # The same id in both places is fine.
    resp = server.put(
        "/predictions/same-id",
        json={"id": "same-id", "input": {"counter_file": str(counter_file), "sleep": 0}},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == "same-id"
    assert len(runs_recorded(counter_file)) == 1


def test_a_put_of_a_prediction_evicted_from_memory_never_runs_it_again(start_server, tmp_path):
    """Finished predictions are bounded in the bytes they hold; one evicted
    for room leaves a tombstone, so repeating its PUT answers 410 with how it
    ended instead of running the model a second time."""
    server = start_server("counter")
    counter_file = tmp_path / "runs.txt"
    first = server.put(
        "/predictions/evict-me",
        json={"input": {"counter_file": str(counter_file), "name": "first", "sleep": 0}},
    )
    assert first.status_code == 200, first.text
    first = first.json()
    assert first["status"] == "succeeded", first
    # Each holds 20 MiB of input and 20 MiB of output: eight are over the
    # 256 MiB the registry keeps, so the oldest goes.
    big = "x" * (20 * 1024 * 1024)
    for i in range(8):
        body = {"input": {"counter_file": str(counter_file), "name": big, "sleep": 0}}
        resp = server.put(f"/predictions/filler-{i}", json=body, timeout=60)
        assert resp.status_code == 200, resp.text[:500]
    assert len(runs_recorded(counter_file)) == 9

    again = server.put(
        "/predictions/evict-me",
        json={"input": {"counter_file": str(counter_file), "name": "first", "sleep": 0}},
    )
    gone = assert_json_error(again, 410)
    assert "no longer kept" in gone["detail"] and "not run again" in gone["detail"], gone
    assert gone["id"] == "evict-me" and gone["status"] == "succeeded", gone
    assert parse_timestamp(gone["completed_at"]) == parse_timestamp(first["completed_at"])
    assert len(runs_recorded(counter_file)) == 9, "the evicted prediction ran again"
    assert assert_json_error(server.get("/predictions/evict-me"), 410)["status"] == "succeeded"
    # The newest are still whole.
    assert server.get("/predictions/filler-7").json()["status"] == "succeeded"
