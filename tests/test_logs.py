"""A prediction's `logs` hold exactly what its run wrote to stdout and stderr,
from Python, os.write, child processes and C code, in order within each
stream; Python-level prints to stdout and stderr keep their interleaving; and
nothing one run writes shows up in another prediction's logs.
"""

from harness import log_lines

# What basic's "channels" mode writes, in order, per stream (see its predict.py).
STDOUT_LINES = [
    "out-1-print",
    "out-2-os-write",
    "out-3-subprocess",
    "out-4-c-printf",
    "out-5-c-write",
]
STDERR_LINES = [
    "err-1-print",
    "err-2-os-write",
    "err-3-subprocess",
    "err-4-c-fprintf",
    "err-5-c-write",
]


def channels_prediction(server, token):
    prediction = server.predict_ok({"mode": "channels", "token": token})
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == f"channels:{token}"
    return prediction


def test_output_from_every_channel_lands_in_the_prediction_logs_exactly_once(start_server):
    server = start_server("basic")
    prediction = channels_prediction(server, "all")
    expected = [f"all:{line}" for line in STDOUT_LINES + STDERR_LINES]
    # Same lines, each once, nothing else; order is checked per stream below.
    assert sorted(log_lines(prediction)) == sorted(expected), prediction["logs"]


def test_writes_to_one_stream_keep_their_order_across_python_os_subprocess_and_c(
    start_server,
):
    server = start_server("basic")
    prediction = channels_prediction(server, "ord")
    lines = log_lines(prediction)
    # stdout and stderr are separate streams, so only the order within each
    # is defined; print, os.write, a child process and libc all share it.
    stdout = [line for line in lines if line.startswith("ord:out-")]
    stderr = [line for line in lines if line.startswith("ord:err-")]
    assert stdout == [f"ord:{line}" for line in STDOUT_LINES], prediction["logs"]
    assert stderr == [f"ord:{line}" for line in STDERR_LINES], prediction["logs"]


def test_python_prints_to_stdout_and_stderr_keep_their_interleaving(start_server):
    server = start_server("basic")
    prediction = server.predict_ok({"mode": "interleave", "token": "il"})
    assert prediction["status"] == "succeeded", prediction
    expected = []
    for i in range(10):
        expected += [f"il:stdout-{i}", f"il:stderr-{i}"]
    assert log_lines(prediction) == expected, prediction["logs"]


def test_logs_do_not_leak_into_the_next_prediction(start_server):
    server = start_server("basic")
    # Several rounds: output still in flight when a run returns (a child
    # process's, or C's last write) must be drained into that run's logs,
    # not carried into the next one. One round could pass by luck.
    for round_ in range(5):
        noisy, quiet = f"noisy{round_}", f"quiet{round_}"
        loud = channels_prediction(server, noisy)
        assert len(log_lines(loud)) == len(STDOUT_LINES) + len(STDERR_LINES), loud["logs"]

        calm = server.predict_ok({"mode": "ok", "token": quiet})
        assert calm["status"] == "succeeded", calm
        assert log_lines(calm) == [f"{quiet}:ok"], calm["logs"]


def test_failed_prediction_logs_hold_its_output_and_traceback_only(start_server):
    server = start_server("basic")
    server.predict_ok({"mode": "ok", "token": "before"})
    failed = server.predict_ok({"mode": "raise", "token": "raiser"})
    assert failed["status"] == "failed", failed
    assert "raiser:about to raise" in log_lines(failed)
    assert "before:" not in failed["logs"], failed["logs"]

    after = server.predict_ok({"mode": "ok", "token": "after"})
    assert log_lines(after) == ["after:ok"], after["logs"]
