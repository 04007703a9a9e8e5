"""Health-check states through setup: STARTING while setup runs (predictions
get 503), READY after, SETUP_FAILED when setup raises; and setup.logs keeping
every line setup printed, including the last ones before it returns or raises.
"""

from harness import assert_json_error, log_lines, parse_timestamp

SETUP_LINES = [
    "setup: first line",
    "setup: a line on stderr",
    "setup: an os.write to fd 1",
]


def test_health_reports_starting_then_ready_and_predict_gets_503_until_setup_finishes(
    start_server, gate
):
    server = start_server("slow_setup", ready=False, env={"SETUP_GATE": str(gate)})

    # Setup is held on the gate, so whatever health says now is mid-setup.
    health = server.health()
    assert health["status"] == "STARTING", health
    assert set(health) >= {"status", "setup", "version"}, health
    assert isinstance(health["version"], dict), health
    assert_json_error(server.predict(), 503)
    # Still STARTING: a refused prediction must not disturb setup.
    assert server.health()["status"] == "STARTING"

    gate.open()
    health = server.wait_for_status("READY", timeout=30)
    setup = health["setup"]
    assert setup["status"] == "succeeded", setup
    started, completed = (
        parse_timestamp(setup["started_at"]),
        parse_timestamp(setup["completed_at"]),
    )
    assert started <= completed, setup

    prediction = server.predict_ok()
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == "ready"


def test_setup_logs_keep_every_line_including_the_one_printed_right_before_returning(
    start_server,
):
    # No gate: setup sleeps a second on its own and returns.
    server = start_server("slow_setup")
    setup = server.health()["setup"]
    lines = log_lines(setup)
    for expected in SETUP_LINES + ["setup: last line, right before returning"]:
        assert expected in lines, f"{expected!r} missing from setup.logs: {setup['logs']!r}"

    # Setup output belongs to setup, not to the first prediction.
    prediction = server.predict_ok()
    assert log_lines(prediction) == ["predict: ran"], prediction["logs"]


def test_setup_failure_reports_setup_failed_with_traceback_and_every_printed_line(
    start_server,
):
    server = start_server("setup_fails", ready=False)
    health = server.wait_for_status("SETUP_FAILED", timeout=30)
    setup = health["setup"]
    assert setup["status"] == "failed", setup
    parse_timestamp(setup["completed_at"])

    logs = setup["logs"]
    lines = log_lines(setup)
    for expected in SETUP_LINES + ["setup: last line, right before raising"]:
        assert expected in lines, f"{expected!r} missing from setup.logs: {logs!r}"
    assert "Traceback" in logs, logs
    assert "RuntimeError" in logs and "setup exploded" in logs, logs

    # Not serving, but alive and saying why.
    assert_json_error(server.predict(), 503)
    assert server.proc.poll() is None
    assert server.health()["status"] == "SETUP_FAILED"


def test_async_setup_runs_before_the_first_prediction(start_server):
    server = start_server("async_setup")
    assert "async setup: done" in log_lines(server.health()["setup"])
    prediction = server.predict_ok({"name": "ada"})
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == "hi from async setup, ada"
