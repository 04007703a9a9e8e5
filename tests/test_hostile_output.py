"""Models whose output is hostile to the server: binary garbage, NULs and
control bytes, a 10 MB line, output that never ends, an exception with a
10 MB message. Each prediction still ends with the logs it is owed (cut with
a marker past the 16 MiB cap), the server and the worker keep serving, and
the server's memory stays bounded.
"""

import pytest
from harness import proc_status_bytes, start_async, wait_for_prediction, wait_until

LOG_CAP = 16 * 1024 * 1024
MARKER = "[cogd: logs truncated: more than 16 MiB was written]"


def worker_pid(server, token: str) -> str:
    prediction = server.predict_ok({"mode": "ok", "token": token})
    assert prediction["status"] == "succeeded", prediction
    return prediction["output"].rsplit(":", 1)[1]


def test_binary_garbage_lands_in_the_logs_and_the_worker_keeps_serving(start_server):
    server = start_server("hostile")
    pid = worker_pid(server, "warm")

    prediction = server.predict_ok({"mode": "binary", "token": "bin"})
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == "binary:bin"
    logs = prediction["logs"]
    assert logs.index("bin:before") < logs.index("bin:after"), logs[:2000]
    # Bytes that are not UTF-8 become U+FFFD; NULs and escapes pass as text.
    assert "\ufffd" in logs
    assert "text with\x00nuls\x00and\x1bescapes" in logs
    assert "\x00" * 1000 in logs
    # print() of a str that UTF-8 cannot encode (a lone surrogate) is replaced.
    assert "a lone surrogate-ish \ufffd" in logs

    assert worker_pid(server, "next") == pid, "the worker was restarted"
    assert server.health()["status"] == "READY"


@pytest.mark.parametrize("via", ["print", "fd"])
def test_a_10_mb_line_is_kept_whole(start_server, via):
    server = start_server("hostile")
    prediction = server.predict_ok({"mode": "long_line", "via": via, "token": "long"}, timeout=60)
    assert prediction["status"] == "succeeded", prediction.get("error")
    lines = prediction["logs"].splitlines()
    assert lines == ["x" * 10_000_000, "long:after"], [len(line) for line in lines]
    assert worker_pid(server, "next")


@pytest.mark.parametrize("via", ["print", "fd"])
def test_endless_output_is_cut_at_the_cap_and_the_run_can_be_cancelled(start_server, via):
    server = start_server("hostile")
    worker_pid(server, "warm")
    rss_before = proc_status_bytes(server.proc.pid)

    prediction_id = start_async(server, input={"mode": "endless", "via": via})["id"]

    def capped():
        resp = server.get(f"/predictions/{prediction_id}", timeout=30)
        assert resp.status_code == 200, resp.text[:500]
        logs = resp.json()["logs"]
        return logs.endswith(MARKER + "\n") and logs

    logs = wait_until(capped, timeout=60, what="the logs to reach the cap", interval=0.2)
    assert LOG_CAP <= len(logs.encode()) <= LOG_CAP + len(MARKER) + 2

    assert server.post(f"/predictions/{prediction_id}/cancel").status_code == 200
    done = wait_for_prediction(server, prediction_id, timeout=30)
    assert done["status"] == "canceled", {k: done[k] for k in ("status", "error")}
    assert done["logs"] == logs, "nothing was added past the marker"

    after = server.predict_ok({"mode": "ok", "token": "after"})
    assert after["logs"] == "after:ok\n"
    # The run wrote without pause until cancelled; the server kept one capped
    # copy of its logs, plus what serving them took.
    growth = proc_status_bytes(server.proc.pid) - rss_before
    assert growth < 160 * 1024 * 1024, f"the server grew by {growth / 2**20:.0f} MiB"


def test_output_that_looks_like_a_sync_marker_is_just_output(start_server):
    server = start_server("hostile")
    prediction = server.predict_ok({"mode": "fake_marker", "token": "fake"})
    assert prediction["status"] == "succeeded", prediction
    logs = prediction["logs"]
    assert "\x00\x1bcogd-sync:18446744073709551615\n" in logs, logs
    assert "\x00\x1bcogd-sync-0123456789abcdef:18446744073709551615\n" in logs, logs
    assert logs.endswith("fake:after\n") or "fake:after\n" in logs, logs
    for i in range(5):
        after = server.predict_ok({"mode": "ok", "token": f"next{i}"})
        assert after["logs"] == f"next{i}:ok\n", after["logs"]


def test_a_10_mb_exception_message_fails_only_that_prediction(start_server):
    server = start_server("hostile")
    pid = worker_pid(server, "warm")

    prediction = server.predict_ok({"mode": "raise_huge"}, timeout=60)
    assert prediction["status"] == "failed", prediction["status"]
    error = prediction["error"]
    assert error.startswith("ValueError: zzz"), error[:200]
    assert error.endswith("[cut: the message was longer than 1 MiB]"), error[-200:]
    assert len(error) < 2 * 1024 * 1024

    assert worker_pid(server, "next") == pid, "the worker was restarted"


def test_a_chunk_too_large_for_one_message_travels_by_file_and_arrives_whole(start_server):
    server = start_server("hostile", env={"COG_PREDICT_TYPE_STUB": "predict.py:Streamer"})
    prediction = server.predict_ok({"size": 10_000_000}, timeout=60)
    assert prediction["status"] == "succeeded", prediction.get("error")
    output = prediction["output"]
    assert len(output) == 3 and output[0] == "small" and output[2] == "after", len(output)
    assert output[1] == "x" * 10_000_000
    ok = server.predict_ok({"size": 10})
    assert ok["status"] == "succeeded" and ok["output"] == ["small", "x" * 10, "after"], ok


def test_worker_memory_stays_flat_over_many_large_string_outputs(start_server):
    # Each output is 20 MiB of text; a worker that kept every one of them
    # until its cyclic collector ran would grow by 400 MiB over 20 runs.
    size = 20 * 1024 * 1024
    server = start_server("hostile")
    pid = int(worker_pid(server, "warm"))
    for _ in range(2):
        warm = server.predict_ok({"mode": "large_output", "size": size}, timeout=60)
        assert warm["status"] == "succeeded", warm.get("error")
    before = proc_status_bytes(pid)
    for _ in range(20):
        prediction = server.predict_ok({"mode": "large_output", "size": size}, timeout=60)
        assert prediction["status"] == "succeeded", prediction.get("error")
        assert len(prediction["output"]) == size
    after = proc_status_bytes(pid)
    grown = after - before
    print(f"worker RSS {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB over 20 runs")
    assert grown < 3 * size, f"the worker grew by {grown / 2**20:.0f} MiB over 20 runs"
    assert worker_pid(server, "next") == str(pid), "the worker was restarted"
