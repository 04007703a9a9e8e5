"""Plain-function predictors, one per output type (and a few that lie about it).

tests/test_types.py serves each with COG_PREDICT_TYPE_STUB=predict.py:NAME and
checks the prediction's output (or its error).
"""

import dataclasses
import io
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Optional

from cog import (
    AsyncConcatenateIterator,
    BaseModel,
    ConcatenateIterator,
    File,
    Opaque,
    Path,
    Secret,
)

try:
    import pydantic
except ImportError:  # the pydantic case is skipped without it
    pydantic = None


class FakeNumpyFloat:
    """Stands in for a numpy scalar: not a float, but item() gives one."""

    def __init__(self, value: float) -> None:
        self.value = value

    def item(self) -> float:
        return self.value


def text_file(content: str, suffix: str = ".txt") -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False)
    f.write(content)
    f.close()
    return Path(f.name)


class Point(BaseModel):
    x: int
    y: int


class Result(BaseModel):
    text: str
    score: float
    point: Point
    tags: list[str]
    file: Path
    note: Optional[str] = None


@dataclasses.dataclass
class Plain:
    name: str
    size: int


def returns_str() -> str:
    return "hello"


def returns_int() -> int:
    return 3


def returns_float_from_int() -> float:
    return 3


def returns_bool() -> bool:
    return True


def returns_numpy_scalar() -> float:
    return FakeNumpyFloat(1.5)


def returns_secret() -> Secret:
    return Secret("shown on purpose")


def returns_path() -> Path:
    return text_file("hello file")


def returns_file() -> File:
    buffer = io.BytesIO(b"<p>hi</p>")
    buffer.name = "page.html"
    return buffer


def returns_list_of_paths() -> list[Path]:
    return [text_file("one"), text_file("two")]


def returns_list_of_ints() -> list[int]:
    return [1, 2, 3]


def returns_dict() -> dict:
    return {"a": 1, "nested": {"b": [True, None]}}


def returns_model() -> Result:
    return Result(
        text="t", score=1, point=Point(x=1, y=2), tags=["a"], file=text_file("model file")
    )


def returns_dataclass() -> Plain:
    return Plain(name="p", size=2)


def returns_iterator() -> Iterator[str]:
    yield "a"
    yield "b"


def returns_concatenate_iterator() -> ConcatenateIterator[str]:
    yield from ["hello", " ", "world"]


async def returns_async_iterator() -> AsyncIterator[int]:
    for i in range(3):
        yield i


async def returns_async_concatenate_iterator() -> AsyncConcatenateIterator[str]:
    yield "x"
    yield "y"


def returns_any() -> Any:
    return {"number": FakeNumpyFloat(2.5), "point": Point(x=0, y=0), "items": (1, 2)}


def returns_opaque() -> Annotated[Plain, Opaque]:
    return Plain(name="opaque", size=1)


def returns_unannotated():
    return ["free", 1]


if pydantic is not None:

    class PydanticOutput(pydantic.BaseModel):
        name: str
        score: Optional[float] = None

    def returns_pydantic() -> PydanticOutput:
        return PydanticOutput(name="pd")


# -- runs whose output does not match what they declare ----------------------


def lies_int() -> int:
    return "abc"


def lies_list_item() -> list[int]:
    return [1, "two", 3]


def lies_missing_field() -> Point:
    return {"x": 1}


def lies_nan() -> float:
    return float("nan")


def returns_bytes() -> str:
    return b"raw"
