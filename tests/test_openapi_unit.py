"""The OpenAPI document ``cogd.schema`` renders from a signature, without a
server (the served document is compared with Cog's in test_schema.py)."""

from __future__ import annotations

import enum
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cogd import Input, Secret
from cogd import Path as CogPath
from cogd.schema import (
    PREBUILT_SCHEMA,
    STREAMING_EXTENSION,
    SchemaError,
    document_for,
    marks_streaming,
    openapi_document,
    other_signature,
    prepare,
    title,
)
from cogd.signature import signature_of


class Scheduler(enum.Enum):
    DDIM = "ddim"
    EULER = "euler"


def predict(
    prompt: str = Input(description="What to draw", min_length=1),
    steps: int = Input(default=20, ge=1, le=100),
    scale: float = 7,
    scheduler: str = Input(default=Scheduler.DDIM, choices=list(Scheduler)),
    image: CogPath | None = None,
    tags: list[str] = Input(default=["a"], max_length=5),
    token: Secret = Input(default="hunter2"),
    seed: int = None,  # type: ignore[assignment]
) -> Iterator[str]:
    yield prompt


def train(dataset: CogPath, scheduler: str = Input(default="linear", choices=["linear"])) -> str:
    return ""


def schemas(document: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"]
    return found


def test_the_input_component_carries_each_declaration() -> None:
    document = openapi_document(signature_of(predict))
    inputs = schemas(document)["Input"]
    props = inputs["properties"]
    assert inputs["title"] == "Input" and inputs["type"] == "object"
    assert inputs["required"] == ["prompt"]
    assert props["prompt"] == {
        "title": "Prompt",
        "type": "string",
        "x-order": 0,
        "description": "What to draw",
        "minLength": 1,
    }
    assert props["steps"] == {
        "title": "Steps",
        "type": "integer",
        "x-order": 1,
        "default": 20,
        "minimum": 1,
        "maximum": 100,
    }
    # An int default of a float input is published as the float it becomes.
    assert props["scale"]["default"] == 7.0 and isinstance(props["scale"]["default"], float)
    # Choices are an enum component named after the input, as Cog names it.
    assert props["scheduler"]["allOf"] == [{"$ref": "#/components/schemas/scheduler"}]
    assert props["scheduler"]["default"] == "ddim"
    assert schemas(document)["scheduler"] == {
        "title": "scheduler",
        "description": "An enumeration.",
        "enum": ["ddim", "euler"],
        "type": "string",
    }
    assert props["image"]["format"] == "uri" and props["image"]["nullable"] is True
    # A list's constraints apply to each item.
    assert props["tags"]["items"] == {"type": "string", "maxLength": 5}
    assert props["tags"]["default"] == ["a"]
    # A secret's default is never published.
    assert "default" not in props["token"] and props["token"]["x-cog-secret"] is True
    assert props["seed"]["nullable"] is True and "default" not in props["seed"]


def test_the_output_and_the_fixed_parts_of_the_document() -> None:
    document = openapi_document(signature_of(predict))
    assert document["openapi"] == "3.0.2"
    assert schemas(document)["Output"] == {
        "title": "Output",
        "type": "array",
        "items": {"type": "string"},
        "x-cog-array-type": "iterator",
    }
    assert set(document["paths"]) == {
        "/",
        "/health-check",
        "/predictions",
        "/predictions/{prediction_id}",
        "/predictions/{prediction_id}/cancel",
        "/shutdown",
    }
    for name in ("PredictionRequest", "PredictionResponse", "Status", "WebhookEvent"):
        assert name in schemas(document)
    request = schemas(document)["PredictionRequest"]["properties"]
    assert request["input"] == {"$ref": "#/components/schemas/Input"}
    assert "TrainingInput" not in schemas(document)


def test_both_modes_share_one_document_without_overwriting_each_other() -> None:
    document = openapi_document(signature_of(predict), signature_of(train))
    found = schemas(document)
    assert found["TrainingInput"]["required"] == ["dataset"]
    assert found["TrainingOutput"] == {"title": "TrainingOutput", "type": "string"}
    assert "/trainings/{training_id}/cancel" in document["paths"]
    # The same input name in the other mode gets a prefixed enum.
    assert found["scheduler"]["enum"] == ["ddim", "euler"]
    assert found["training_scheduler"]["enum"] == ["linear"]
    ref = found["TrainingInput"]["properties"]["scheduler"]["allOf"][0]["$ref"]
    assert ref == "#/components/schemas/training_scheduler"
    # A training function's document is the same, its part served.
    alone = openapi_document(None, signature_of(train))
    assert "/predictions" not in alone["paths"] and "/trainings" in alone["paths"]


def test_an_input_named_like_a_fixed_component_keeps_both() -> None:
    def run(status: str = Input(choices=["on", "off"], default="on")) -> str:
        return status

    found = schemas(openapi_document(signature_of(run)))
    assert found["Status"]["enum"][0] == "starting"
    assert found["status"]["enum"] == ["on", "off"]


def test_titles_are_cogs() -> None:
    assert title("num_outputs") == "Num Outputs"
    assert title("x") == "X"


def test_prepare_marks_streaming_and_describes_the_other_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "training.py").write_text(
        textwrap.dedent(
            """
            def train(epochs: int) -> str:
                return ""

            def broken(data: bytes) -> str:
                return ""
            """
        )
    )
    signature, text = prepare(predict, streaming=True, other_ref="training.py:train")
    document = json.loads(text)
    assert [s.name for s in signature.inputs][:2] == ["prompt", "steps"]
    assert document["paths"]["/predictions"]["post"][STREAMING_EXTENSION] is True
    assert marks_streaming(text)
    assert schemas(document)["TrainingInput"]["required"] == ["epochs"]

    # An other-mode function that cannot be described costs only its part.
    _, text = prepare(predict, other_ref="training.py:broken")
    assert "TrainingInput" not in schemas(json.loads(text)) and not marks_streaming(text)
    assert "leaving trainings out of the schema: training.py:broken" in capsys.readouterr().err
    assert other_signature(None, "predict") is None
    assert other_signature("missing.py:train", "predict") is None

    # Training mode describes the predictor as its other part.
    _, text = prepare(train, "train", other_ref="training.py:train")
    document = json.loads(text)
    assert "/trainings" in document["paths"] and "/predictions" in document["paths"]
    assert STREAMING_EXTENSION not in document["paths"]["/predictions"]["post"]


def test_a_prebuilt_schema_wins_and_must_be_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".cog").mkdir()
    prebuilt = tmp_path / PREBUILT_SCHEMA
    prebuilt.write_text('{"openapi": "3.0.2", "prebuilt": true}')

    def odd(data: bytes, count: int = 2) -> bytes:
        return data

    # A signature cogd cannot describe is served loosely under a pre-built file.
    signature, text = prepare(odd)
    assert json.loads(text)["prebuilt"] is True
    assert [(s.name, s.info.default) for s in signature.inputs][1] == ("count", 2)
    assert "inputs pass through unchecked" in capsys.readouterr().out

    prebuilt.write_text("{not json")
    with pytest.raises(SchemaError, match="is not valid JSON"):
        prepare(predict)


def test_document_for_reads_the_model_as_the_worker_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_for_document.py").write_text(
        textwrap.dedent(
            """
            from cog import BasePredictor, streaming

            @streaming
            class Predictor(BasePredictor):
                def predict(self, text: str) -> str:
                    return text

                def train(self, rate: float) -> str:
                    return ""
            """
        )
    )
    text = document_for(
        "model_for_document.py:Predictor", other_ref="model_for_document.py:Predictor"
    )
    document = json.loads(text)
    assert marks_streaming(text)
    assert schemas(document)["Input"]["required"] == ["text"]
    assert schemas(document)["TrainingInput"]["required"] == ["rate"]
