"""The model's schema: /openapi.json built from type hints, `cogd schema`, the
pre-built schema file, and signatures that cannot be expressed.

The all_types model uses every input type and a structured output; its
document is compared with the checked-in snapshot
`test_schema_all_types.json`. After an intended change to the document,
regenerate it with `COGD_UPDATE_SNAPSHOTS=1 pytest tests/test_schema.py` and
review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from harness import MODELS, cogd_executable, server_env

SNAPSHOT = Path(__file__).with_name("test_schema_all_types.json")


def schemas(document: dict) -> dict:
    return document["components"]["schemas"]


def test_openapi_matches_the_snapshot_for_every_input_and_output_type(start_server):
    server = start_server("all_types")
    resp = server.get("/openapi.json")
    assert resp.status_code == 200, resp.text
    document = resp.json()
    if os.environ.get("COGD_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(document, indent=2) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    # Compared piece by piece first, so a failure points at what changed.
    for name in sorted(set(schemas(expected)) | set(schemas(document))):
        assert schemas(document).get(name) == schemas(expected).get(name), name
    assert document == expected


def test_the_document_has_cogs_shape(start_server):
    document = start_server("all_types").get("/openapi.json").json()
    assert document["openapi"].startswith("3.0")
    found = schemas(document)
    for name in ("Input", "Output", "PredictionRequest", "PredictionResponse", "Status"):
        assert name in found, name
    assert "WebhookEvent" in found
    for path in ("/predictions", "/predictions/{prediction_id}", "/health-check"):
        assert path in document["paths"], path

    props = found["Input"]["properties"]
    assert found["Input"]["required"] == ["prompt", "image", "api_key"]
    assert [p["x-order"] for p in props.values()] == sorted(p["x-order"] for p in props.values())
    assert props["steps"]["minimum"] == 1 and props["steps"]["maximum"] == 100
    assert props["prompt"]["minLength"] == 1 and props["prompt"]["maxLength"] == 50
    assert props["code"]["pattern"] == "^[a-z]+[0-9]+$"
    assert props["image"]["format"] == "uri"
    assert props["api_key"]["format"] == "password" and props["api_key"]["x-cog-secret"] is True
    assert props["seed"]["nullable"] is True and "seed" not in found["Input"]["required"]
    assert props["old"]["deprecated"] is True
    assert props["number_or_text"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    # choices are a named enum component, referenced as Cog does
    assert props["scheduler"]["allOf"] == [{"$ref": "#/components/schemas/scheduler"}]
    assert found["scheduler"]["enum"] == ["ddim", "euler", "heun"]
    assert found["size"]["type"] == "integer"

    output = found["Output"]
    assert output["type"] == "object"
    assert output["properties"]["note"]["nullable"] is True
    assert "note" not in output["required"] and "text" in output["required"]


def test_training_schemas_appear_when_train_is_configured(start_server):
    document = start_server("all_types").get("/openapi.json").json()
    found = schemas(document)
    assert found["TrainingInput"]["required"] == ["dataset"]
    assert found["TrainingOutput"]["properties"]["weights"]["format"] == "uri"
    assert "/trainings" in document["paths"]
    # The training input's choices do not overwrite the prediction's.
    assert found["scheduler"]["enum"] == ["ddim", "euler", "heun"]
    training_choices = found["TrainingInput"]["properties"]["scheduler"]["allOf"][0]["$ref"]
    assert found[training_choices.rsplit("/", 1)[1]]["enum"] == ["cosine", "linear"]
    # A model without train: has no training part.
    plain = start_server("basic").get("/openapi.json").json()
    assert "TrainingInput" not in schemas(plain) and "/trainings" not in plain["paths"]


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        ("basic", {"mode", "token", "seconds", "gate"}),  # legacy predict()
        ("runner", {"name"}),  # BaseRunner.run()
        ("function_predictor", {"text", "times"}),  # a plain function
    ],
)
def test_every_predictor_shape_gets_a_schema(start_server, model, inputs):
    document = start_server(model).get("/openapi.json").json()
    assert set(schemas(document)["Input"]["properties"]) == inputs
    assert schemas(document)["Output"] == {"title": "Output", "type": "string"}


@pytest.mark.parametrize(
    ("function", "output"),
    [
        (
            "returns_iterator",
            {"type": "array", "items": {"type": "string"}, "x-cog-array-type": "iterator"},
        ),
        (
            "returns_concatenate_iterator",
            {
                "type": "array",
                "items": {"type": "string"},
                "x-cog-array-type": "iterator",
                "x-cog-array-display": "concatenate",
            },
        ),
        (
            "returns_async_iterator",
            {"type": "array", "items": {"type": "integer"}, "x-cog-array-type": "iterator"},
        ),
        (
            "returns_async_concatenate_iterator",
            {
                "type": "array",
                "items": {"type": "string"},
                "x-cog-array-type": "iterator",
                "x-cog-array-display": "concatenate",
            },
        ),
        ("returns_list_of_paths", {"type": "array", "items": {"type": "string", "format": "uri"}}),
        ("returns_dict", {"type": "object"}),
        ("returns_any", {}),
    ],
)
def test_output_schemas_describe_iterators_lists_and_objects(start_server, function, output):
    server = start_server("outputs", env={"COG_PREDICT_TYPE_STUB": f"predict.py:{function}"})
    document = server.get("/openapi.json").json()
    assert schemas(document)["Output"] == {"title": "Output", **output}


def test_a_prebuilt_schema_file_is_served_and_enforced_as_it_is(start_server):
    server = start_server("prebuilt_schema")
    document = server.get("/openapi.json").json()
    expected = json.loads((MODELS / "prebuilt_schema/.cog/openapi_schema.json").read_text())
    assert document == expected
    # The file's bounds are enforced, though the code has none...
    resp = server.predict({"level": 9})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "input", "level"]
    # ...and its default (3, where the code says 1) is the one applied.
    prediction = server.predict_ok({})
    assert prediction["output"] == "level 3", prediction


@pytest.mark.parametrize(
    ("function", "named"),
    [
        ("custom_type", ["'thing'", "predict.Thing"]),
        ("union_with_path", ["'source'", "Union", "cog.Path"]),
        ("var_kwargs", ["**extra"]),
        ("unannotated", ["'prompt'", "no type annotation"]),
    ],
)
def test_an_unsupported_signature_fails_setup_naming_the_parameter(start_server, function, named):
    server = start_server(
        "unsupported", ready=False, env={"COG_PREDICT_TYPE_STUB": f"predict.py:{function}"}
    )
    health = server.wait_for_status("SETUP_FAILED")
    logs = health["setup"]["logs"]
    for text in named:
        assert text in logs, logs
    assert server.predict({}).status_code == 503


def run_cogd_schema(
    model_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cogd_executable()), "schema", str(model_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(env),
        cwd="/",
    )


def test_cogd_schema_prints_what_the_server_serves(start_server):
    served = start_server("all_types").get("/openapi.json").json()
    result = run_cogd_schema(MODELS / "all_types")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == served


def test_cogd_schema_keeps_model_output_off_stdout(tmp_path):
    (tmp_path / "cog.yaml").write_text('predict: "predict.py:predict"\n')
    (tmp_path / "predict.py").write_text(
        "import os\n"
        "print('printed at import')\n"
        "os.write(1, b'written to fd 1 at import\\n')\n"
        "def predict(x: int = 1) -> int:\n"
        "    return x\n"
    )
    result = run_cogd_schema(tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # nothing else on stdout
    assert schemas(document)["Input"]["properties"]["x"]["default"] == 1
    assert "printed at import" in result.stderr


def test_cogd_schema_names_the_parameter_it_cannot_express():
    result = run_cogd_schema(
        MODELS / "unsupported", env={"COG_PREDICT_TYPE_STUB": "predict.py:union_with_path"}
    )
    assert result.returncode != 0
    assert result.stdout == ""
    assert "'source'" in result.stderr and "cog.Path" in result.stderr, result.stderr


def test_cogd_schema_serves_the_prebuilt_file():
    result = run_cogd_schema(MODELS / "prebuilt_schema")
    assert result.returncode == 0, result.stderr
    assert "x-prebuilt-marker" in json.loads(result.stdout)["components"]["schemas"]
