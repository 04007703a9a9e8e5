"""The server's own logs on stderr: one JSON object per line by default (also
while a model prints during setup and runs), plain text with LOG_FORMAT=console.
"""

import json


def run_and_stop(server):
    # Exercise setup output, a run's output and a failing run, then stop the
    # server so its stderr is complete before it is read.
    server.predict_ok({"mode": "channels", "token": "noise"})
    server.predict_ok({"mode": "raise", "token": "noise"})
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


def test_log_format_console_gives_plain_text_logs(start_server):
    server = start_server("basic", env={"LOG_FORMAT": "console"})
    lines = run_and_stop(server)
    assert lines, "the server logged nothing at all on stderr"
    assert not all(parses_as_json_object(line) for line in lines), lines[:5]
