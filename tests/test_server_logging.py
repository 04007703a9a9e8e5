"""The server's own logs on stderr: one JSON object per line by default (also
while a model prints during setup and runs), plain text with LOG_FORMAT=console.
Each prediction gets one line at info when it finishes, and every line logged
while a prediction is handled names it.
"""

import json
import time


def run_and_stop(server, ids=("logged-ok", "logged-failed")):
    # Exercise setup output, a run's output and a failing run, then stop the
    # server so its stderr is complete before it is read.
    for prediction_id, mode in zip(ids, ("channels", "raise"), strict=True):
        body = {"input": {"mode": mode, "token": "noise"}}
        resp = server.put(f"/predictions/{prediction_id}", json=body)
        assert resp.status_code == 200, resp.text
    server.terminate()
    assert server.wait_exit(timeout=15) == 0
    return [line for line in server.stderr_text().splitlines() if line.strip()]


def parses_as_json_object(line):
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_server_logs_are_json_lines_on_stderr_by_default(start_server):
    server = start_server("basic")
    lines = run_and_stop(server)
    assert lines, "the server logged nothing at all on stderr"
    not_json = [line for line in lines if not parses_as_json_object(line)]
    assert not_json == [], (
        f"{len(not_json)} of {len(lines)} stderr lines are not JSON objects: {not_json[:5]}"
    )
    finished = {}
    for line in map(json.loads, lines):
        if line.get("message") == "prediction finished":
            assert line["level"] == "INFO", line
            finished[line["prediction_id"]] = line
    assert finished.keys() == {"logged-ok", "logged-failed"}, lines
    assert finished["logged-ok"]["status"] == "succeeded"
    assert finished["logged-failed"]["status"] == "failed"
    assert "boom" in finished["logged-failed"]["error"]
    assert "error" not in finished["logged-ok"]
    assert all(line["run_seconds"] >= 0 for line in finished.values())


def test_every_line_logged_for_a_prediction_names_it(start_server):
    # At debug, the acceptance line is logged while the prediction is handled
    # and carries no id of its own: the id comes from the prediction's log
    # context (JSON logs) or span (console logs, traces).
    server = start_server("basic", env={"COG_LOG_LEVEL": "info,cogd=debug"})
    lines = [json.loads(line) for line in run_and_stop(server, ids=("first", "second"))]
    accepted = [line for line in lines if line.get("message") == "prediction accepted"]
    assert [line.get("prediction_id") for line in accepted] == ["first", "second"], accepted


def test_log_format_console_gives_plain_text_logs(start_server):
    server = start_server("basic", env={"LOG_FORMAT": "console"})
    lines = run_and_stop(server)
    assert lines, "the server logged nothing at all on stderr"
    assert not all(parses_as_json_object(line) for line in lines), lines[:5]
    finished = [line for line in lines if "prediction finished" in line]
    assert len(finished) == 2 and "logged-ok" in finished[0], finished


def test_lines_are_written_while_the_server_runs_and_when_it_stops(start_server):
    # Info lines are written in batches a few milliseconds apart: the line of a
    # finished prediction reaches stderr with the server still up, and the
    # last lines before exit (at info too) are not lost.
    server = start_server("basic")
    resp = server.put("/predictions/live-line", json={"input": {"mode": "channels"}})
    assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + 10
    while '"prediction_id":"live-line"' not in server.stderr_text():
        assert time.monotonic() < deadline, server.output_tail()
        time.sleep(0.01)
    assert server.proc.poll() is None
    server.terminate()
    assert server.wait_exit(timeout=15) == 0
    last = json.loads(server.stderr_text().splitlines()[-1])
    assert last["level"] == "INFO" and last["message"] == "stopped", last
