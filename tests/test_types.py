"""Outputs: every supported output type encodes to JSON; an output that does
not match its declared type is sent as it is (as Cog sends it), and only one
JSON cannot carry fails the prediction, saying what was returned. Also the SDK
names models import from `cog`.

The outputs model has one plain-function predictor per case, chosen with
COG_PREDICT_TYPE_STUB.
"""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys

import pytest


def run_output(start_server, function: str) -> dict:
    server = start_server("outputs", env={"COG_PREDICT_TYPE_STUB": f"predict.py:{function}"})
    return server.predict_ok({})


def data_uri(mime: str, content: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("returns_str", "hello"),
        ("returns_int", 3),
        ("returns_float_from_int", 3.0),
        ("returns_bool", True),
        ("returns_numpy_scalar", 1.5),  # through item()
        ("returns_secret", "shown on purpose"),
        ("returns_path", data_uri("text/plain", b"hello file")),
        ("returns_file", data_uri("text/html", b"<p>hi</p>")),
        ("returns_list_of_paths", [data_uri("text/plain", b"one"), data_uri("text/plain", b"two")]),
        ("returns_list_of_ints", [1, 2, 3]),
        ("returns_dict", {"a": 1, "nested": {"b": [True, None]}}),
        (
            "returns_model",
            {
                "text": "t",
                "score": 1.0,
                "point": {"x": 1, "y": 2},
                "tags": ["a"],
                "file": data_uri("text/plain", b"model file"),
                "note": None,
            },
        ),
        ("returns_dataclass", {"name": "p", "size": 2}),
        ("returns_iterator", ["a", "b"]),
        ("returns_concatenate_iterator", ["hello", " ", "world"]),
        ("returns_async_iterator", [0, 1, 2]),
        ("returns_async_concatenate_iterator", ["x", "y"]),
        ("returns_any", {"number": 2.5, "point": {"x": 0, "y": 0}, "items": [1, 2]}),
        ("returns_opaque", {"name": "opaque", "size": 1}),
        ("returns_unannotated", ["free", 1]),
    ],
)
def test_every_output_type_encodes_to_json(start_server, function, expected):
    prediction = run_output(start_server, function)
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == expected
    # Floats stay floats (3.0, not 3) where the type says float.
    if isinstance(expected, float):
        assert isinstance(prediction["output"], float)


@pytest.mark.skipif(importlib.util.find_spec("pydantic") is None, reason="needs pydantic")
def test_a_pydantic_model_output_is_an_object(start_server):
    prediction = run_output(start_server, "returns_pydantic")
    assert prediction["output"] == {"name": "pd", "score": None}
    server = start_server("outputs", env={"COG_PREDICT_TYPE_STUB": "predict.py:returns_pydantic"})
    output = server.get("/openapi.json").json()["components"]["schemas"]["Output"]
    assert output["properties"]["score"]["nullable"] is True
    assert output["required"] == ["name"]


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("lies_int", "abc"),
        ("lies_list_item", [1, "two", 3]),
        ("lies_missing_field", {"x": 1}),
    ],
)
def test_an_output_that_does_not_match_its_annotation_is_sent_as_it_is(
    start_server, function, expected
):
    prediction = run_output(start_server, function)
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == expected


@pytest.mark.parametrize(
    ("function", "said"),
    [
        ("lies_nan", ["nan", "JSON cannot represent"]),
        ("returns_bytes", ["cannot be sent as JSON", "bytes b'raw'"]),
    ],
)
def test_an_output_json_cannot_carry_fails_the_prediction(start_server, function, said):
    prediction = run_output(start_server, function)
    assert prediction["status"] == "failed", prediction
    assert prediction["output"] is None
    for text in said:
        assert text in prediction["error"], prediction["error"]


def test_the_sdk_names_are_importable_from_cog():
    code = (
        "import cog\n"
        "from cog import (AsyncConcatenateIterator, BaseModel, BasePredictor, BaseRunner,\n"
        "    ConcatenateIterator, File, Input, Opaque, Path, Secret, URLPath)\n"
        "class Out(BaseModel):\n"
        "    a: int\n"
        "    b: str | None = None\n"
        "assert Out(a=1) == Out(a=1, b=None)\n"
        "assert str(URLPath('https://x.test/a.png')) == 'https://x.test/a.png'\n"
        "assert isinstance(URLPath('https://x.test/a.png'), Path)\n"
        "assert str(Secret('v')) == '**********' and Secret('v').get_secret_value() == 'v'\n"
        "assert Input(deprecated=True).deprecated is True\n"
        "assert ConcatenateIterator[str] is not None and AsyncConcatenateIterator[str]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
