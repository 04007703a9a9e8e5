"""The server's own logs on stderr: one JSON object per line by default (also
while a model prints during setup and runs), plain text with LOG_FORMAT=console.
Each prediction gets one line at info when it finishes, and every line logged
while a prediction is handled names it.

Each line the model prints is logged too, at info, with `source` (stdout or
stderr): setup's under target `cogd::model::setup`, a run's under `cogd::model::prediction`
with its `prediction_id`. COG_LOG_LEVEL takes a level as Cog's CLI passes it
(`warning`); setup's lines stay visible at any level.
"""

import json
import re
import subprocess
import time

import pytest
from harness import EXAMPLES, cogd_executable, server_env


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


# -- the model's own output in the server's log ------------------------------


# The colours of console lines.
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def model_output_lines(lines, target):
    """The JSON lines the server logged for what the model printed (`target`:
    cogd::model::setup or cogd::model::prediction), as (source, message, prediction_id)."""
    found = []
    for line in map(json.loads, lines):
        if line.get("target") == target:
            assert line["level"] == "INFO", line
            found.append((line["source"], line["message"], line.get("prediction_id")))
    return found


def test_each_line_the_model_prints_is_logged_with_its_prediction_and_stream(start_server):
    server = start_server("basic")
    resp = server.put("/predictions/printed-1", json={"input": {"mode": "channels", "token": "pr"}})
    assert resp.status_code == 200, resp.text
    logs = resp.json()["logs"]
    server.terminate()
    assert server.wait_exit(timeout=15) == 0
    lines = [line for line in server.stderr_text().splitlines() if line.strip()]

    assert model_output_lines(lines, "cogd::model::setup") == [
        ("stdout", "basic: setup done", None)
    ]
    # Every route to fd 1 and 2 (print, os.write, C, child processes), each
    # line once, with its stream and its prediction.
    run_lines = model_output_lines(lines, "cogd::model::prediction")
    expected = [
        ("stdout", f"pr:out-{i}", "printed-1")
        for i in ("1-print", "2-os-write", "3-subprocess", "4-c-printf", "5-c-write")
    ] + [
        ("stderr", f"pr:err-{i}", "printed-1")
        for i in ("1-print", "2-os-write", "3-subprocess", "4-c-fprintf", "5-c-write")
    ]
    assert sorted(run_lines) == sorted(expected), run_lines
    # The prediction's own logs are as they always were: each line once.
    assert sorted(logs.splitlines()) == sorted(message for _, message, _ in expected), logs


def test_console_logs_show_the_models_lines_with_their_prediction(start_server):
    server = start_server("basic", env={"LOG_FORMAT": "console"})
    resp = server.put("/predictions/console-1", json={"input": {"token": "cons"}})
    assert resp.status_code == 200, resp.text
    server.terminate()
    assert server.wait_exit(timeout=15) == 0
    lines = [ANSI.sub("", line) for line in server.stderr_text().splitlines()]
    setup = [line for line in lines if "basic: setup done" in line]
    assert len(setup) == 1 and "INFO" in setup[0] and 'source="stdout"' in setup[0], lines
    run = [line for line in lines if "cons:ok" in line]
    assert len(run) == 1, lines
    assert 'prediction_id="console-1"' in run[0] and 'source="stdout"' in run[0], run


@pytest.mark.parametrize("level", ["warning", "WARNING", "warn", "error"])
def test_at_a_cog_log_level_errors_and_setup_output_still_show(start_server, level):
    # Cog's CLI always passes COG_LOG_LEVEL=warning. Errors must be logged,
    # and what setup printed stays visible; the rest of info is left out.
    server = start_server("setup_fails", ready=False, env={"COG_LOG_LEVEL": level})
    server.wait_for_status("SETUP_FAILED")
    server.terminate()
    assert server.wait_exit(timeout=15) == 0
    lines = [json.loads(line) for line in server.stderr_text().splitlines() if line.strip()]
    printed = [
        (line["source"], line["message"])
        for line in lines
        if line["target"] == "cogd::model::setup"
    ]
    # Every line, the traceback's too; two pipes, so in no set order.
    assert {
        ("stdout", "setup: first line"),
        ("stderr", "setup: a line on stderr"),
        ("stdout", "setup: an os.write to fd 1"),
        ("stdout", "setup: last line, right before raising"),
        ("stderr", "RuntimeError: setup exploded"),
    } <= set(printed), printed
    failed = [line for line in lines if line["message"] == "setup failed"]
    assert len(failed) == 1 and failed[0]["level"] == "ERROR", lines
    others = [line for line in lines if line["target"] != "cogd::model::setup"]
    assert all(line["level"] in ("WARN", "ERROR") for line in others), others


def test_cogd_predict_shows_the_models_output_once(tmp_path):
    # `cogd predict` shows setup's output and the run's logs itself; the
    # server's log, which Cog's CLI asks for at warning, does not repeat them.
    result = subprocess.run(
        [str(cogd_executable()), "predict", str(EXAMPLES / "hello"), "-i", "name=once"],
        cwd=tmp_path,
        env=server_env({"COG_LOG_LEVEL": "warning"}),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello, once\n"
    assert result.stderr.count("hello: setup done") == 1, result.stderr
    assert result.stderr.count("greeting once") == 1, result.stderr
