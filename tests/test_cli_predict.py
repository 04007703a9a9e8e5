"""`cogd predict [MODEL_DIR] -i NAME=VALUE … [--json …] [--train]`: one run
without an HTTP server. Setup logs and progress go to stderr, the output to
stdout (text as it is, JSON otherwise), file outputs to files in the current
directory. Exit 0 on success, 1 when setup or the run fails, 2 for bad usage
or an input the schema refuses.
"""

import json
import subprocess
from pathlib import Path

from harness import EXAMPLES, MODELS, cogd_executable, server_env

TIMEOUT_S = 90


def cogd_predict(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cogd_executable()), "predict", *args],
        cwd=cwd,
        env=server_env(env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_predict_prints_the_output_and_setup_logs(tmp_path):
    result = cogd_predict(tmp_path, str(EXAMPLES / "hello"), "-i", "name=terminal")
    assert result.returncode == 0, explain(result)
    assert result.stdout == "hello, terminal\n", explain(result)
    # Setup's own output and the run's logs are shown, on stderr.
    assert "hello: setup done" in result.stderr, explain(result)
    assert "greeting terminal" in result.stderr, explain(result)
    assert "setup finished" in result.stderr, explain(result)


def test_json_input_and_file_text_input(tmp_path):
    result = cogd_predict(tmp_path, str(EXAMPLES / "hello"), "--json", '{"name": "json"}')
    assert result.returncode == 0, explain(result)
    assert result.stdout == "hello, json\n"

    (tmp_path / "name.txt").write_text("from a file")
    (tmp_path / "input.json").write_text('{"name": "ignored"}')
    result = cogd_predict(
        tmp_path, str(EXAMPLES / "hello"), "--json", "@input.json", "-i", "name=@name.txt"
    )
    assert result.returncode == 0, explain(result)
    assert result.stdout == "hello, from a file\n", explain(result)


def test_a_file_input_reaches_the_run_as_a_local_file(tmp_path):
    (tmp_path / "data.txt").write_text("file contents")
    result = cogd_predict(tmp_path, str(MODELS / "file_inputs"), "-i", "file=@data.txt")
    assert result.returncode == 0, explain(result)
    output = json.loads(result.stdout)
    assert output["file"]["text"] == "file contents", output
    assert output["file"]["size"] == len("file contents")


def test_file_outputs_are_written_to_the_current_directory(tmp_path):
    result = cogd_predict(
        tmp_path, str(MODELS / "trainer"), "--train", "-i", "text=ab", "-i", "steps=3"
    )
    assert result.returncode == 0, explain(result)
    output = json.loads(result.stdout)
    assert output["steps"] == 3, output
    written = tmp_path / output["weights"]
    assert written.is_file(), output
    assert written.read_text() == "ababab"


def test_a_failed_run_exits_1_with_its_error(tmp_path):
    result = cogd_predict(tmp_path, str(MODELS / "basic"), "-i", "mode=raise")
    assert result.returncode == 1, explain(result)
    assert "boom" in result.stderr, explain(result)
    assert result.stdout == ""


def test_a_failed_setup_exits_1(tmp_path):
    result = cogd_predict(tmp_path, str(MODELS / "setup_fails"))
    assert result.returncode == 1, explain(result)
    assert "setup exploded" in result.stderr, explain(result)
    assert "setup failed" in result.stderr, explain(result)


def test_bad_input_and_bad_usage_exit_2(tmp_path):
    result = cogd_predict(
        tmp_path, str(MODELS / "trainer"), "--train", "-i", "text=x", "-i", "steps=0", "-i", "x=1"
    )
    assert result.returncode == 2, explain(result)
    assert "steps" in result.stderr and "x" in result.stderr, explain(result)

    for args in (["-i", "no-equals-sign"], ["--json", "[1, 2]"], ["-i", "name=@missing.txt"]):
        result = cogd_predict(tmp_path, str(EXAMPLES / "hello"), *args)
        assert result.returncode == 2, explain(result)


def test_a_reader_that_stops_early_is_no_failure(tmp_path):
    """`cogd predict … | head`: the output outgrows the pipe, the reader
    closes it after a few bytes, and cogd exits 0 without a panic."""
    (tmp_path / "input.json").write_text(json.dumps({"token": "t" * (1 << 20)}))
    # The run also logs its token: stderr goes to a file, so it never blocks.
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [str(cogd_executable()), "predict", str(MODELS / "basic"), "--json", "@input.json"],
            cwd=tmp_path,
            env=server_env(None),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout.read(3) == b"ok:"
        proc.stdout.close()
        code = proc.wait(timeout=TIMEOUT_S)
    stderr = (tmp_path / "stderr").read_text(errors="replace")
    assert code == 0, stderr[-2000:]
    assert "panicked" not in stderr, stderr[-2000:]
