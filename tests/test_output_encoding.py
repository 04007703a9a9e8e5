"""Outputs as JSON and inputs as Python values (``cogd.coercion``), without a
server: what the worker hands the Rust side for each kind of value."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import io
import json
import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from cogd import BaseModel, Input, Secret
from cogd import Path as CogPath
from cogd.coercion import (
    LONG_STRING,
    EncodedOutput,
    FileRef,
    InputCoercionError,
    OutputTypeError,
    coerce_inputs,
    encode_output,
    output_json,
)
from cogd.signature import ListOf, Scalar, UnionOf, signature_of
from cogd.types import URLPath


def output_of(fn: Callable[..., Any]) -> Any:
    return signature_of(fn).output


def as_json(fn: Callable[..., Any], value: Any, output_dir: str | None = None) -> Any:
    encoded = output_json(output_of(fn), value, output_dir=output_dir)
    assert isinstance(encoded, EncodedOutput)
    return json.loads(encoded.text())


class Color(enum.Enum):
    RED = "red"


class Count(enum.IntEnum):
    TWO = 2


class Scored(BaseModel):
    text: str
    score: float


@dataclasses.dataclass
class Labelled:
    label: str
    extra: dict[str, Any] | None = None


class FakeScalar:
    """What numpy's scalars look like to the encoder: a value behind ``item()``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def item(self) -> Any:
        return self.value


class FakeArray:
    def tolist(self) -> list[int]:
        return [1, 2, 3]


def test_json_is_compact_utf8_and_one_piece() -> None:
    def run() -> dict:
        return {}

    encoded = output_json(output_of(run), {"word": "héllo", "n": [1, 2]})
    assert encoded == EncodedOutput(['{"word":"héllo","n":[1,2]}'], "[]", [])
    assert output_json(output_of(run), None) == EncodedOutput(["null"], "[]", [])


def test_values_follow_the_declared_type_where_they_fit() -> None:
    def floats() -> float: ...

    def strings() -> str: ...

    def ints() -> int: ...

    def objects() -> Scored: ...

    assert as_json(floats, 3) == 3.0 and isinstance(as_json(floats, 3), float)
    assert as_json(floats, FakeScalar(1.5)) == 1.5
    assert as_json(strings, Color.RED) == "red"
    assert as_json(ints, Count.TWO) == 2
    assert as_json(objects, Scored(text="a", score=1)) == {"text": "a", "score": 1.0}
    # A mapping for a structured output is taken field by field.
    assert as_json(objects, {"text": "b", "score": 2, "more": Color.RED}) == {
        "text": "b",
        "score": 2.0,
        "more": "red",
    }


def test_values_that_do_not_fit_go_as_they_are() -> None:
    def ints() -> int: ...

    def untyped():  # type: ignore[no-untyped-def]
        ...

    # Cog never fails an output for not matching its annotation.
    assert as_json(ints, "not a number") == "not a number"
    assert as_json(untyped, Labelled("x")) == {"label": "x", "extra": None}
    assert as_json(untyped, FakeArray()) == [1, 2, 3]
    assert as_json(untyped, Secret("s3cret")) == "s3cret"
    assert as_json(untyped, {1: (Color.RED, {"x"})}) == {"1": ["red", ["x"]]}


def test_iterators_and_generators_are_drained() -> None:
    def items() -> Iterator[int]: ...

    def floats() -> list[float]: ...

    assert as_json(items, (n for n in range(3))) == [0, 1, 2]
    assert as_json(floats, (1, 2)) == [1.0, 2.0]

    async def agen() -> Any:
        for n in range(2):
            yield n

    def run_async(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        return asyncio.run(fn())

    assert encode_output(output_of(items), agen(), run_async) == [0, 1]


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (float("nan"), "output is nan, which JSON cannot represent"),
        (b"raw", "output cannot be sent as JSON: the run returned bytes b'raw'"),
        ([1, object()], "output[1] cannot be sent as JSON"),
    ],
)
def test_what_json_cannot_carry_fails_saying_where(value: Any, said: str) -> None:
    def untyped():  # type: ignore[no-untyped-def]
        ...

    with pytest.raises(OutputTypeError, match=said.replace("[", r"\[").replace("(", r"\(")):
        output_json(output_of(untyped), value)


def test_a_structured_output_missing_a_field_names_it() -> None:
    def objects() -> Scored: ...

    partial = Scored(text="t", score=1.0)
    del partial.score
    with pytest.raises(OutputTypeError, match=r"output.score is required by Scored"):
        output_json(output_of(objects), partial)


def test_files_are_listed_with_their_pointers_not_read(tmp_path: Path) -> None:
    def images() -> dict:
        return {}

    image = tmp_path / "out.png"
    image.write_bytes(b"\x89PNG")
    encoded = output_json(
        output_of(images),
        {"images": [CogPath(image)], "url": URLPath("https://example.invalid/a.png")},
    )
    assert json.loads(encoded.text()) == {"images": [None], "url": "https://example.invalid/a.png"}
    assert json.loads(encoded.files) == [
        {
            "pointer": "/images/0",
            "path": str(image),
            "filename": "out.png",
            "mime_type": "image/png",
        }
    ]


def test_a_file_object_is_copied_into_the_run_directory(tmp_path: Path) -> None:
    def one() -> CogPath: ...

    data = io.BytesIO(b"hello")
    data.name = "greeting.txt"
    data.read()  # read already: sent from the start all the same
    output_dir = tmp_path / "run"
    encoded = output_json(output_of(one), data, output_dir=str(output_dir))
    (listed,) = json.loads(encoded.files)
    assert listed["pointer"] == "" and listed["filename"] == "greeting.txt"
    assert listed["mime_type"] == "text/plain"
    assert os.path.dirname(listed["path"]) == str(output_dir)
    assert Path(listed["path"]).read_bytes() == b"hello"
    # A path string that names no file is a string, not a file.
    assert as_json(one, "https://example.invalid/x") == "https://example.invalid/x"
    assert FileRef("/a", "a", "text/plain").filename == "a"


def test_long_strings_are_left_for_the_rust_side_to_escape() -> None:
    def untyped():  # type: ignore[no-untyped-def]
        ...

    long = 'x"\n' * (LONG_STRING // 3 + 1)
    encoded = output_json(output_of(untyped), {"a": long, "b": "short", "c": [long]})
    assert encoded.strings == [long, long]
    assert len(encoded.pieces) == 3
    assert all(long not in piece for piece in encoded.pieces)
    assert json.loads(encoded.text()) == {"a": long, "b": "short", "c": [long]}
    # A long string alone is one string between two empty pieces.
    alone = output_json(output_of(untyped), long)
    assert alone.pieces == ["", ""] and alone.strings == [long]


# -- inputs ----------------------------------------------------------------------


def test_inputs_become_the_declared_python_values(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("x")

    def run(
        image: CogPath,
        remote: CogPath,
        token: Secret,
        choice: int | float | bool,
        scale: float,
        tags: list[str] = Input(default=["a"]),
        maybe: int | None = None,
    ) -> None: ...

    signature = signature_of(run)
    kwargs = coerce_inputs(
        signature,
        {
            "image": str(source),
            "remote": "https://example.invalid/i.png",
            "token": "s3cret",
            "choice": True,
            "scale": 2,
        },
    )
    assert isinstance(kwargs["image"], CogPath) and kwargs["image"].read_text() == "x"
    assert isinstance(kwargs["remote"], URLPath)
    assert str(kwargs["remote"]) == "https://example.invalid/i.png"
    assert kwargs["token"].get_secret_value() == "s3cret"
    # The most specific union member wins: True is a bool, not the int 1.
    assert kwargs["choice"] is True
    # A JSON int for a float input stays an int, as Cog hands it over.
    assert kwargs["scale"] == 2 and type(kwargs["scale"]) is int
    assert kwargs["maybe"] is None
    # A mutable default is a fresh copy for each run.
    kwargs["tags"].append("b")
    again = coerce_inputs(
        signature, {"image": str(source), "remote": "", "token": "", "choice": 1, "scale": 1.0}
    )
    assert again["tags"] == ["a"] and type(again["choice"]) is int


def test_an_input_the_run_cannot_take_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    def run(count: int, items: list[int]) -> None: ...

    signature = signature_of(run)
    with pytest.raises(InputCoercionError, match="input 'count' is required"):
        coerce_inputs(signature, {"items": []})
    with pytest.raises(InputCoercionError, match="input 'items': expected a list, got str"):
        coerce_inputs(signature, {"count": 1, "items": "no"})
    assert coerce_inputs(signature, {"count": 3.0, "items": [], "other": 1})["count"] == 3
    assert "ignoring inputs the run does not take: other" in capsys.readouterr().out


def test_union_members_are_tried_most_specific_first() -> None:
    from cogd.coercion import coerce

    node = UnionOf((Scalar("str"), Scalar("float"), Scalar("int")))
    assert type(coerce(node, 2)) is int
    assert type(coerce(node, 2.5)) is float
    assert coerce(ListOf(node), ["a", 1]) == ["a", 1]
