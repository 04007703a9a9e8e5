"""Models written for Cog run unchanged: the current generation (`run:` in
cog.yaml, a `BaseRunner`, Cog 0.23's imports, deprecated names included) and
the older one (`predict:`, a `BasePredictor` with a pydantic-style output).

Outputs go as Cog sends them: never failed for not matching their
annotation, `None` always allowed, compact UTF-8 JSON. Inputs arrive as Cog's
runtime hands them over: a JSON int stays an int for a `float` input, and an
explicit `null` is refused even for an optional input.
"""

from __future__ import annotations

import json
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from harness import MODELS, cogd_executable, serve_loopback, server_env


@pytest.fixture
def current(start_server):
    return start_server("cog_current")


def test_a_run_key_in_cog_yaml_names_the_runner(current):
    prediction = current.predict_ok({})
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == "text plain"
    assert "runner setup done" in current.health()["setup"]["logs"]


def test_deprecated_names_work_and_say_so_once_in_the_setup_logs(current):
    logs = current.health()["setup"]["logs"]
    assert logs.count("cog: ExperimentalFeatureWarning is deprecated") == 1, logs
    # emit_metric is taken from the module inside each run: announced once,
    # at the first run, and it records the metric every time.
    first = current.predict_ok({})
    second = current.predict_ok({})
    assert first["metrics"]["calls"] == 1 and second["metrics"]["calls"] == 1
    assert "emit_metric() is deprecated" in first["logs"], first["logs"]
    assert "emit_metric() is deprecated" not in second["logs"], second["logs"]


def test_choices_computed_empty_at_import_warn_and_setup_goes_on(current):
    logs = current.health()["setup"]["logs"]
    assert "input 'style': choices is empty; ignoring the choices" in logs, logs
    assert current.predict_ok({"style": "anything"})["output"] == "text anything"


def test_a_str_run_returning_none_succeeds_with_null_output(current):
    prediction = current.predict_ok({"mode": "none"})
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] is None


def test_an_output_that_does_not_match_its_annotation_is_sent_as_it_is(current):
    prediction = current.predict_ok({"mode": "types"})
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"]["style"] == "plain"


def test_an_int_reaches_a_float_input_as_the_int(current):
    got = current.predict_ok({"mode": "types", "ratio": 1, "either": 2})["output"]
    assert got["ratio"] == ["int", 1]
    assert got["either"] == ["int", 2]
    got = current.predict_ok({"mode": "types", "ratio": 1.5, "either": "s"})["output"]
    assert got["ratio"] == ["float", 1.5] and got["either"] == ["str", "s"]


def test_an_explicit_null_is_refused_but_leaving_an_optional_input_out_is_none(current):
    resp = current.predict({"mode": "types", "maybe": None})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "input", "maybe"]
    assert current.predict_ok({"mode": "types"})["output"]["maybe"] is None
    assert current.predict_ok({"mode": "types", "maybe": 3})["output"]["maybe"] == 3


def test_output_json_is_compact_utf8(current):
    resp = current.predict({"mode": "unicode"})
    assert resp.status_code == 200, resp.text
    raw = resp.content.decode("utf-8")
    assert '"output":{"count":42,"text":"héllo ✓"}' in raw, raw


@pytest.mark.parametrize("mode", ["surrogate", "long_surrogate"])
def test_a_lone_surrogate_in_an_output_still_makes_valid_json(current, mode):
    resp = current.predict({"mode": mode})
    assert resp.status_code == 200, resp.text
    prediction = json.loads(resp.content)  # strict: valid JSON
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"].endswith("\ufffd" if mode == "long_surrogate" else "a\ufffdb")


def test_a_urlfile_is_lazy_picklable_and_reads_like_a_response(current):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = f"served {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server, url = serve_loopback(Handler)
    try:
        prediction = current.predict_ok({"mode": "urlfile", "url": f"{url}/weights.bin"})
    finally:
        server.shutdown()
    assert prediction["output"] == "served /weights.bin", prediction


def test_a_pydantic_era_predictor_loads_and_its_output_is_an_object(start_server):
    server = start_server("cog_legacy")
    logs = server.health()["setup"]["logs"]
    # The model's own `run` helper does not take over from predict().
    assert "defines both run() and predict(); running predict()" in logs, logs
    first = server.predict_ok({"text": "a", "count": 2})
    assert first["output"] == {"text": "a", "tags": ["tag0", "tag1"], "seed": None}
    # The list default is copied for each instance, as pydantic made it.
    assert server.predict_ok({"count": 0})["output"] == {"text": "hi", "tags": [], "seed": None}
    output = server.get("/openapi.json").json()["components"]["schemas"]["Output"]
    assert list(output["properties"]) == ["text", "tags", "seed"], output
    assert output["properties"]["seed"]["nullable"] is True


def test_cogd_predict_runs_a_model_named_by_run_key(tmp_path: Path):
    result = subprocess.run(
        [str(cogd_executable()), "predict", str(MODELS / "cog_current"), "-i", "mode=none"],
        cwd=tmp_path,
        env=server_env(None),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "runner setup done" in result.stderr


def test_cog_yaml_with_both_run_and_predict_is_refused(tmp_path: Path):
    (tmp_path / "cog.yaml").write_text('run: "run.py:Runner"\npredict: "predict.py:Predictor"\n')
    result = subprocess.run(
        [str(cogd_executable()), "predict", str(tmp_path)],
        cwd=tmp_path,
        env=server_env(None),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "'run' and 'predict' cannot both be set" in result.stderr, result.stderr
