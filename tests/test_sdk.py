"""The `cog` SDK as model code sees it, without a server: every public name and
submodule of Cog 0.23.1's SDK (and the Cog 0.13 names real models still import),
and the behaviour behind them: BaseModel's rules, runner bridging, Input,
URLFile, Secret, the loader's choice of class, deprecation lines.

Cases that depend on a fresh interpreter (what is printed on import) run in a
subprocess.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import pickle
import subprocess
import sys
import textwrap
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import cog
import pytest
from cog import BaseModel, BasePredictor, BaseRunner, Input
from harness import serve_loopback

# Cog 0.23.1's public modules and their names, as its own modules list them.
SDK_0_23 = {
    "cog": [
        "__version__",
        "BaseRunner",
        "BasePredictor",
        "BaseModel",
        "Opaque",
        "Input",
        "FieldInfo",
        "Path",
        "Secret",
        "File",
        "URLFile",
        "URLPath",
        "ConcatenateIterator",
        "AsyncConcatenateIterator",
        "CancelationException",
        "current_scope",
        "streaming",
        "concurrent",
        "ExperimentalFeatureWarning",
        "emit_metric",
    ],
    "cog.types": [
        "FILENAME_ILLEGAL_CHARS",
        "FILENAME_MAX_LENGTH",
        "get_filename",
        "Secret",
        "URLFile",
        "File",
        "URLPath",
        "Path",
        "Item",
        "ConcatenateIterator",
        "AsyncConcatenateIterator",
    ],
    "cog.input": ["FieldInfo", "Input"],
    "cog.model": ["BaseModel"],
    "cog.predictor": [
        "BaseRunner",
        "BasePredictor",
        "load_predictor_from_ref",
        "has_setup_weights",
        "extract_setup_weights",
    ],
    "cog.errors": ["CogError", "ConfigDoesNotExist", "PredictorNotSet"],
    "cog.coder": ["Coder"],
    "cog.mode": ["Mode"],
    "cog.suppress_output": ["suppress_output"],
    "cog.exceptions": ["CancelationException"],
    "cog.server.http": ["Mode"],
}

# What Cog 0.13's `cog.types` had that models still import from it.
TYPES_0_13 = [
    "Input",
    "ExperimentalFeatureWarning",
    "Weights",
    "CogConfig",
    "CogBuildConfig",
    "CogConcurrencyConfig",
    "get_filename_from_urlopen",
    "PYDANTIC_V2",
]


@pytest.mark.parametrize("module", sorted(SDK_0_23))
def test_every_public_name_of_cogs_sdk_imports(module):
    imported = importlib.import_module(module)
    missing = [name for name in SDK_0_23[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lacks {missing}"


def test_cog_013_names_import_from_cog_types():
    import cog.types

    missing = [name for name in TYPES_0_13 if not hasattr(cog.types, name)]
    assert not missing, missing
    assert cog.types.Path is cog.Path


def test_star_import_gives_cogs_all():
    assert set(SDK_0_23["cog"]) <= set(cog.__all__)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_deprecated_names_work_and_print_their_line_once_on_stderr():
    result = run_python(
        """
        import warnings
        import cog
        from cog import ExperimentalFeatureWarning
        from cog import ExperimentalFeatureWarning as again
        from cog.types import ExperimentalFeatureWarning as from_types
        assert again is ExperimentalFeatureWarning is from_types
        assert issubclass(ExperimentalFeatureWarning, Warning)
        # Filtering it out (what models do with it) cannot hide the line.
        warnings.filterwarnings("ignore", category=ExperimentalFeatureWarning)
        cog.emit_metric("n", 1)  # outside a run: nothing to record, no error
        from cog import emit_metric
        emit_metric("n", 2)
        print("done")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    lines = result.stderr.splitlines()
    assert lines == [
        "cog: ExperimentalFeatureWarning is deprecated and will be removed in a future "
        "release. Remove `ExperimentalFeatureWarning` from your imports and any associated "
        "`warnings.filterwarnings(...)` calls.",
        "cog: emit_metric() is deprecated and will be removed in a future release. "
        "Use current_scope().record_metric(name, value) instead.",
    ], result.stderr


def test_importing_cog_prints_nothing():
    result = run_python("import cog, cog.types, cog.predictor, cog.server.http\n")
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


def test_an_unknown_name_is_an_attribute_error_naming_the_module():
    with pytest.raises(AttributeError, match="module 'cog' has no attribute 'Nope'"):
        cog.Nope  # noqa: B018


def test_one_version_string():
    import cogd

    assert cog.__version__ == cogd.__version__


# -- BaseModel --------------------------------------------------------------------


def test_base_model_subclasses_are_dataclasses():
    class Output(BaseModel):
        text: str
        score: float | None = None

    assert dataclasses.is_dataclass(Output)
    assert Output("a") == Output(text="a", score=None)


def test_base_model_keywords_go_to_dataclass():
    class Frozen(BaseModel, frozen=True):
        x: int

    with pytest.raises(dataclasses.FrozenInstanceError):
        Frozen(1).x = 2  # type: ignore[misc]

    class NoInit(BaseModel, init=False):
        x: int = 0

    with pytest.raises(TypeError):
        NoInit(x=1)  # type: ignore[call-arg]


def test_base_model_refuses_a_dataclass_mixin_and_a_foreign_primary_base():
    @dataclasses.dataclass
    class Mixin:
        y: int = 0

    with pytest.raises(TypeError, match='Cannot mixin dataclass "Mixin"'):

        class Mixed(BaseModel, Mixin):
            x: int

    class Plain:
        pass

    with pytest.raises(TypeError, match="must inherit from BaseModel"):

        class Backwards(Plain, BaseModel):
            x: int


def test_auto_dataclass_false_is_left_alone_and_cannot_follow_an_automatic_parent():
    class Manual(BaseModel, auto_dataclass=False):
        x: int = 1

    assert not dataclasses.is_dataclass(Manual)

    class StillManual(Manual, auto_dataclass=False):
        pass

    class Auto(BaseModel):
        x: int

    with pytest.raises(ValueError, match="broken field inheritance"):

        class Broken(Auto, auto_dataclass=False):
            pass


def test_pydantic_era_declarations_work_as_pydantic_made_them():
    class Output(BaseModel):
        text: str
        tags: list[str] = []  # noqa: RUF012 - a pydantic-style mutable default
        seed: int | None

    first, second = Output(text="a"), Output(text="b")
    first.tags.append("x")
    assert second.tags == [] and first.seed is None

    class DefaultFirst(BaseModel):
        a: int = 1
        b: str

    assert DefaultFirst(b="x") == DefaultFirst(a=1, b="x")


def test_pydantic_field_defaults_are_read():
    pydantic = pytest.importorskip("pydantic")

    class Output(BaseModel):
        text: str = pydantic.Field(description="required, as Field(...) says")
        n: int = pydantic.Field(default=3)
        items: list[int] = pydantic.Field(default_factory=list)

    assert Output(text="t") == Output(text="t", n=3, items=[])
    with pytest.raises(TypeError):
        Output()  # type: ignore[call-arg]


# -- runners ----------------------------------------------------------------------


def test_predict_and_run_bridge_to_each_other():
    class Legacy(BasePredictor):
        def predict(self, x: int) -> int:
            return x + 1

    class Current(BaseRunner):
        def run(self, x: int) -> int:
            return x * 2

    assert Legacy().run(x=1) == 2
    with pytest.warns(DeprecationWarning, match=r"Current.predict\(\) is deprecated"):
        assert Current().predict(x=3) == 6
    with pytest.raises(NotImplementedError):
        BaseRunner().run()
    assert issubclass(BasePredictor, BaseRunner)


def test_record_metric_and_scope_are_inert_outside_a_run():
    class Runner(BaseRunner):
        def run(self) -> str:
            return "x"

    runner = Runner()
    runner.record_metric("tokens", 1)
    assert runner.scope.context == {}


# -- Input and FieldInfo ----------------------------------------------------------


def test_input_returns_field_info_and_refuses_default_factory():
    info = Input(default=2, description="d", ge=1, le=3, choices=[1, 2, 3], deprecated=True)
    assert isinstance(info, cog.FieldInfo)
    assert (info.default, info.description, info.ge, info.le) == (2, "d", 1, 3)
    assert info.choices == [1, 2, 3] and info.deprecated is True
    with pytest.raises(TypeError, match="default_factory is not supported in Input()"):
        Input(default_factory=list)
    # Cog 0.13 passed Input to pydantic, where `...` means required.
    assert Input(..., description="x").required and not Input(default=None).required


# -- Secret, Path, File, URLFile --------------------------------------------------


def test_secret_is_masked_and_compares_by_value():
    secret = cog.Secret("hunter2")
    assert str(secret) == "**********" and repr(secret) == "Secret(**********)"
    assert secret.get_secret_value() == "hunter2" and secret.secret_value == "hunter2"
    assert secret == cog.Secret("hunter2") and hash(secret) == hash(cog.Secret("hunter2"))
    assert str(cog.Secret()) == "" and cog.Secret().get_secret_value() is None


def test_path_and_file_validate_as_cogs_do():
    assert cog.Path.validate("/tmp/x.png") == Path("/tmp/x.png")
    url = cog.Path.validate("https://example.com/a%20b.png")
    assert isinstance(url, cog.URLPath) and str(url) == "https://example.com/a%20b.png"
    assert url.name == "a b.png"
    decoded = cog.File.validate("data:text/plain;base64,aGk=")
    assert decoded.read() == b"hi"
    assert isinstance(cog.File.validate("https://example.com/w.bin"), cog.URLFile)
    with pytest.raises(ValueError, match="'ftp' is not a valid URL scheme"):
        cog.File.validate("ftp://example.com/x")


def test_get_filename_names_data_uris_by_type_and_cuts_long_names():
    from cog.types import get_filename

    assert get_filename("data:image/png;base64,aGk=") == "file.png"
    assert get_filename("https://example.com/dir/my+file.txt?x=1") == "my file.txt"
    long_name = get_filename("https://example.com/" + "é" * 300 + ".safetensors")
    assert len(long_name.encode()) <= 200 and long_name.endswith("~.safetensors")


@pytest.fixture
def served_file():
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.headers.get("User-Agent", ""))
            body = b"line one\nline two\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server, url = serve_loopback(Handler)
    yield f"{url}/dir/weights.bin", hits
    server.shutdown()


def test_urlfile_is_lazy_picklable_and_acts_like_the_response(served_file, monkeypatch):
    url, hits = served_file
    monkeypatch.setenv("COG_USER_AGENT", "cogd-test/1")
    remote = cog.URLFile(url)
    assert remote.name == "weights.bin"
    assert isinstance(remote, io.IOBase)
    assert hits == [] and "for " in repr(remote)
    copy = pickle.loads(pickle.dumps(remote))
    assert hits == [], "neither making nor pickling it fetches anything"
    assert copy.name == "weights.bin"
    assert list(copy) == [b"line one\n", b"line two\n"]
    assert hits == ["cogd-test/1"]
    assert remote.read() == b"line one\nline two\n"
    assert "wrapping" in repr(remote)
    with pytest.raises(ValueError, match="HTTP or HTTPS"):
        cog.URLFile("file:///etc/passwd")


# -- the rest of the SDK ----------------------------------------------------------


def test_concurrent_takes_cogs_forms():
    @cog.concurrent
    async def bare() -> None: ...

    @cog.concurrent(max=4)
    async def four() -> None: ...

    assert bare._cog_concurrency_max == 1 and four._cog_concurrency_max == 4
    with pytest.raises(ValueError, match="at least 1"):
        cog.concurrent(max=0)
    with pytest.raises(TypeError, match="must be an integer"):
        cog.concurrent(max="2")


def test_coder_registry_finds_a_registered_coder():
    from cog.coder import Coder

    class Point:
        pass

    class PointCoder(Coder):
        @staticmethod
        def factory(tpe):
            return PointCoder() if tpe is Point else None

        def encode(self, x):
            return {}

        def decode(self, x):
            return Point()

    Coder.register(PointCoder)
    assert isinstance(Coder.lookup(Point), PointCoder)
    assert Coder.lookup(int) is None


def test_mode_errors_and_suppress_output():
    from cog.errors import CogError, ConfigDoesNotExist, PredictorNotSet
    from cog.mode import Mode
    from cog.suppress_output import suppress_output

    assert str(Mode.TRAIN) == "train" and Mode("predict") is Mode.PREDICT
    assert issubclass(ConfigDoesNotExist, CogError) and issubclass(PredictorNotSet, CogError)
    result = run_python(
        """
        import os
        from cog.suppress_output import suppress_output
        print("before", flush=True)
        with suppress_output():
            print("hidden")
            os.write(1, b"hidden fd\\n")
        print("after")
        """
    )
    assert result.stdout == "before\nafter\n", result.stdout
    assert callable(suppress_output)


# -- which class a module's reference loads ---------------------------------------


def write_module(tmp_path: Path, body: str) -> str:
    path = tmp_path / "model_under_test.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_a_reference_without_a_name_loads_runner_then_predictor(tmp_path, monkeypatch):
    from cog.predictor import load_predictor_from_ref

    monkeypatch.chdir(tmp_path)
    both = write_module(
        tmp_path,
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
    with pytest.warns(UserWarning, match="Both Runner and Predictor are defined; using Runner"):
        assert load_predictor_from_ref(both).run() == "runner"
    only = tmp_path / "only_predictor.py"
    only.write_text(
        "from cog import BasePredictor\n"
        "class Predictor(BasePredictor):\n"
        "    def predict(self) -> str:\n"
        "        return 'predictor'\n"
    )
    with pytest.warns(DeprecationWarning, match="Predictor is deprecated; use Runner instead"):
        assert load_predictor_from_ref(str(only)).predict() == "predictor"
    assert load_predictor_from_ref(f"{only}:Predictor").run() == "predictor"


def test_setup_weights_helpers(monkeypatch, tmp_path):
    from cog.predictor import extract_setup_weights, has_setup_weights

    class WithWeights(BaseRunner):
        def setup(self, weights=None) -> None: ...

    class Without(BaseRunner):
        def setup(self) -> None: ...

    assert has_setup_weights(WithWeights()) and not has_setup_weights(Without())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COG_WEIGHTS", "https://example.com/w")
    assert extract_setup_weights(WithWeights()) == "https://example.com/w"
    monkeypatch.delenv("COG_WEIGHTS")
    assert extract_setup_weights(WithWeights()) is None
    os.mkdir("weights")
    assert extract_setup_weights(WithWeights()) == Path("weights")
