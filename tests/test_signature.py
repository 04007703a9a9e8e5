"""Signature reading and model loading, without a server: ``cogd.signature``
turns a run method's type hints into the type tree, ``cogd.loader`` imports a
model and finds what runs."""

from __future__ import annotations

import enum
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import pytest
from cogd import BaseModel, ConcatenateIterator, File, Input, Opaque, Secret
from cogd import Path as CogPath
from cogd.loader import LoadError, declared, find_run_method, load_predictor, run_method_name
from cogd.signature import (
    IteratorOf,
    ListOf,
    Nullable,
    ObjectOf,
    Scalar,
    SchemaError,
    UnionOf,
    annotation_name,
    loose_signature,
    signature_of,
    type_name,
)
from cogd.types import MISSING


def nodes(fn: Any) -> dict[str, Any]:
    return {spec.name: spec.node for spec in signature_of(fn).inputs}


def test_each_scalar_annotation_is_its_leaf() -> None:
    def run(
        s: str, i: int, f: float, b: bool, p: CogPath, fi: File, se: Secret, d: dict, a: Any
    ) -> str:
        return ""

    assert nodes(run) == {
        "s": Scalar("str"),
        "i": Scalar("int"),
        "f": Scalar("float"),
        "b": Scalar("bool"),
        "p": Scalar("path"),
        "fi": Scalar("file"),
        "se": Scalar("secret"),
        "d": Scalar("dict"),
        "a": Scalar("any"),
    }
    assert signature_of(run).output == Scalar("str")


def test_optional_union_list_and_opaque_shapes() -> None:
    def run(
        o: Optional[int],  # noqa: UP045 - each spelling is tested
        n: int | None,
        u: Union[int, str],  # noqa: UP007
        lst: list[float],
        bare: list,
        op: Annotated[dict, Opaque],
        ops: Annotated[list, Opaque],
        path: Path,
    ) -> None:
        return None

    found = nodes(run)
    assert found["o"] == Nullable(Scalar("int")) == found["n"]
    assert found["u"] == UnionOf((Scalar("int"), Scalar("str")))
    assert found["lst"] == ListOf(Scalar("float"))
    assert found["bare"] == ListOf(Scalar("any"))
    assert found["op"] == Scalar("opaque")
    assert found["ops"] == ListOf(Scalar("opaque"))
    # Any pathlib path is a file input.
    assert found["path"] == Scalar("path")
    # No declared output (or `-> None`) is checked as nothing.
    assert signature_of(run).output == Scalar("any")


def test_defaults_and_input_declarations_travel_with_each_parameter() -> None:
    def run(
        a: int,
        b: int = 3,
        c: str = Input(description="C", default="x", min_length=1),
        d: int = None,  # type: ignore[assignment]
        e: str = Input(),
    ) -> int:
        return 0

    specs = {s.name: s for s in signature_of(run).inputs}
    assert [s.order for s in signature_of(run).inputs] == [0, 1, 2, 3, 4]
    assert specs["a"].required and specs["a"].info.default is MISSING
    assert specs["b"].info.default == 3 and not specs["b"].required
    assert specs["c"].info.description == "C" and specs["c"].info.min_length == 1
    # `x: int = None` means "may be left out", as in Cog.
    assert specs["d"].node == Nullable(Scalar("int")) and not specs["d"].required
    assert specs["e"].required


def test_string_annotations_are_resolved_in_the_model_module() -> None:
    # This module has `from __future__ import annotations`: every hint is text.
    def run(x: list[CogPath], y: Secret | None = None) -> Iterator[str]:
        yield ""

    assert nodes(run) == {"x": ListOf(Scalar("path")), "y": Nullable(Scalar("secret"))}
    assert signature_of(run).output == IteratorOf(Scalar("str"), concatenate=False)


def test_a_method_read_from_its_class_skips_self() -> None:
    class Model:
        def predict(self, prompt: str) -> str:
            return prompt

    assert [s.name for s in signature_of(Model.predict, skip_self=True).inputs] == ["prompt"]
    assert [s.name for s in signature_of(Model().predict).inputs] == ["prompt"]


@pytest.mark.parametrize(
    ("annotation", "said"),
    [
        ("Union[str, CogPath]", "a Union may only combine"),
        ("bytes", "an input may be str, int"),
        ("set[int]", "an input may be str, int"),
    ],
)
def test_an_input_that_cannot_be_expressed_names_the_parameter(annotation: str, said: str) -> None:
    namespace: dict[str, Any] = {}
    exec(  # noqa: S102 - a run method with the annotation under test
        f"def run(value: {annotation}) -> str: ...",
        {**globals()},
        namespace,
    )
    with pytest.raises(SchemaError) as error:
        signature_of(namespace["run"])
    assert "input 'value' has type" in str(error.value)
    assert said in str(error.value)


def test_parameters_the_schema_cannot_pass_are_refused() -> None:
    def star(*args: int) -> None: ...

    def stars(**kwargs: int) -> None: ...

    def positional(x: int, /) -> None: ...

    def bare(x) -> None: ...  # type: ignore[no-untyped-def]

    def unresolvable(x: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    for fn, said in [
        (star, "input *args: the schema cannot express variable arguments"),
        (stars, "input **kwargs"),
        (positional, "input 'x' is positional-only"),
        (bare, "input 'x' has no type annotation"),
        (unresolvable, "cannot resolve the type hint of input 'x'"),
    ]:
        with pytest.raises(SchemaError, match=said.replace("*", r"\*")):
            signature_of(fn)


# Output classes live at module level, as in model code: the hints of this
# module are text (`from __future__ import annotations`), resolved in it.
class Out(BaseModel):
    text: str
    score: float | None = None


@dataclass
class Pair:
    left: int
    right: list[Out]


@dataclass
class Tree:
    child: Tree | None


def test_outputs_may_be_iterators_objects_and_lists_of_them() -> None:
    def streams() -> ConcatenateIterator[str]: ...

    async def async_items() -> AsyncIterator[int]: ...

    def objects() -> list[Pair]: ...

    assert signature_of(streams).output == IteratorOf(Scalar("str"), concatenate=True)
    assert signature_of(async_items).output == IteratorOf(Scalar("int"), concatenate=False)
    out = ObjectOf(Out, (("text", Scalar("str")), ("score", Nullable(Scalar("float")))))
    pair = ObjectOf(Pair, (("left", Scalar("int")), ("right", ListOf(out))))
    assert signature_of(objects).output == ListOf(pair)
    assert type_name(signature_of(objects).output) == "list[Pair]"


def test_an_output_that_cannot_be_expressed_is_named() -> None:
    def recursive() -> Tree: ...

    def joined() -> ConcatenateIterator[int]: ...

    def raw() -> bytes: ...

    with pytest.raises(SchemaError, match="Tree contains itself"):
        signature_of(recursive)
    with pytest.raises(SchemaError, match="must yield str"):
        signature_of(joined)
    with pytest.raises(SchemaError, match="the return type bytes cannot be expressed"):
        signature_of(raw)


def test_constraints_that_cannot_apply_are_dropped_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Color(enum.Enum):
        RED = "red"

    def run(
        text: str = Input(ge=1, default="a"),
        count: int = Input(min_length=2, default=1),
        pattern: str = Input(regex="(", default="b"),
        pick: str = Input(choices=[Color.RED, "blue"], default="red"),
        empty: str = Input(choices=[], default="x"),
        wrong: int = Input(choices=["a"], default=1),
        out_of_range: int = Input(ge=5, default=1),
    ) -> None: ...

    specs = {s.name: s.info for s in signature_of(run).inputs}
    warnings = capsys.readouterr().err
    assert specs["text"].ge is None
    assert "input 'text': ge/le apply to int and float inputs, not str" in warnings
    assert specs["count"].min_length is None
    assert specs["pattern"].regex is None and "regex '(' is invalid" in warnings
    assert specs["pick"].choices == [Color.RED, "blue"]
    assert specs["empty"].choices is None and "choices is empty" in warnings
    assert specs["wrong"].choices is None and "choice 'a' is not a int" in warnings
    # A default that breaks its own constraint is applied all the same.
    assert specs["out_of_range"].ge == 5
    assert "the default 1 is less than ge=5; it is applied all the same" in warnings


def test_a_loose_signature_takes_anything_with_the_declared_defaults() -> None:
    def run(x: bytes, y: int = 4, *rest: int) -> bytes: ...

    loose = loose_signature(run)
    assert [(s.name, s.node, s.info.default) for s in loose.inputs] == [
        ("x", Scalar("any"), MISSING),
        ("y", Scalar("any"), 4),
    ]
    assert loose.output == Scalar("any")


def test_annotations_are_named_as_the_user_wrote_them() -> None:
    assert annotation_name(CogPath) == "cog.Path"
    assert annotation_name(int) == "int"
    assert annotation_name(Path) == "pathlib.Path"
    assert annotation_name(Optional[int]) == "Optional[int]"  # noqa: UP045


# -- loading ---------------------------------------------------------------------


def write_model(directory: Path, name: str, source: str) -> None:
    (directory / name).write_text(textwrap.dedent(source))


def test_a_reference_without_a_name_takes_runner_else_predictor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_model(
        tmp_path,
        "both_kinds.py",
        """
        from cog import BasePredictor, BaseRunner

        class Runner(BaseRunner):
            def run(self) -> str:
                return "runner"

        class Predictor(BasePredictor):
            def predict(self) -> str:
                return "predictor"
        """,
    )
    write_model(
        tmp_path,
        "only_predictor.py",
        """
        class Predictor:
            def predict(self) -> str:
                return "predictor"
        """,
    )
    with pytest.warns(UserWarning, match="Both Runner and Predictor"):
        assert load_predictor("both_kinds.py").__name__ == "Runner"
    with pytest.warns(DeprecationWarning, match="Predictor is deprecated"):
        assert load_predictor("only_predictor.py").__name__ == "Predictor"
    assert load_predictor("both_kinds.py:Predictor").__name__ == "Predictor"


def test_bad_references_say_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_model(tmp_path, "empty_model.py", "VALUE = 1\n")
    for ref, said in [
        ("empty_model.py:", "invalid predictor reference"),
        ("missing.py:Predictor", "predictor file 'missing.py' not found"),
        ("empty_model.py:Predictor", "'empty_model.py' has no attribute 'Predictor'"),
        ("empty_model.py", "has no Runner or Predictor"),
    ]:
        with pytest.raises(LoadError, match=said):
            load_predictor(ref)
    with pytest.raises(LoadError, match="neither a class nor a function"):
        find_run_method(load_predictor("empty_model.py:VALUE"))


def test_reuse_takes_the_module_already_imported_from_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_model(
        tmp_path,
        "counted.py",
        """
        import builtins
        builtins.counted_imports = getattr(builtins, "counted_imports", 0) + 1

        def predict(x: int) -> int:
            return x

        def train(y: str) -> str:
            return y
        """,
    )
    import builtins

    first = load_predictor("counted.py:predict")
    again = load_predictor("counted.py:train", reuse=True)
    assert again.__module__ == first.__module__
    assert builtins.counted_imports == 1  # type: ignore[attr-defined]
    load_predictor("counted.py:train")  # as Cog's loader does: imported again
    assert builtins.counted_imports == 2  # type: ignore[attr-defined]
    del builtins.counted_imports  # type: ignore[attr-defined]


class _Both:
    def run(self, a: int) -> int:
        return a

    def predict(self, b: int) -> int:
        return b


class _Static:
    @staticmethod
    def predict(c: int) -> int:
        return c


class _ClassMethod:
    def run(self, d: int) -> int:
        return d

    @classmethod
    def train(cls, e: int) -> int:
        return e


def test_one_find_run_method_for_the_worker_and_the_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Both run() and predict(): an older model, whose predict() runs.
    both = find_run_method(_Both)
    assert both.name == "predict" and both.skip_self
    assert "defines both run() and predict()" in capsys.readouterr().err
    instance, bound = both.bind()
    assert isinstance(instance, _Both) and bound(2) == 2
    assert [s.name for s in signature_of(both.function, skip_self=True).inputs] == ["b"]

    # Read from the class: a static method has no self, a class method is bound.
    static = find_run_method(_Static)
    assert static.name == "predict" and not static.skip_self
    assert [s.name for s in signature_of(static.function).inputs] == ["c"]
    trainer = find_run_method(_ClassMethod, "train")
    assert trainer.name == "train" and not trainer.skip_self
    assert [s.name for s in signature_of(trainer.function).inputs] == ["e"]
    assert find_run_method(_ClassMethod).skip_self
    with pytest.raises(LoadError, match="defines no train"):
        run_method_name(_Static, "train")
    with pytest.raises(LoadError, match="run or predict method not found"):
        run_method_name(int)

    def function(x: int) -> int:
        return x

    plain = find_run_method(function)
    assert plain.name is None and plain.bind() == (None, function)


def test_declared_concurrency_and_streaming_are_read_from_method_or_class() -> None:
    from cogd import concurrent, streaming

    @streaming
    class Streams:
        @concurrent(max=3)
        async def run(self) -> str:
            return ""

    run = find_run_method(Streams)
    assert declared(run.function, run.predictor) == (3, True)
    instance, bound = run.bind()
    assert declared(bound, run.predictor) == (3, True)
    assert declared(_Both.predict, _Both) == (None, False)
