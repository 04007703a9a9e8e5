"""Loading a model: its ``FILE.py:NAME`` reference imported, its run method found.

:func:`load_predictor` imports the file and returns the class or function it
names; :func:`find_run_method` says which method of a class runs (``run`` or
``predict``, ``train`` in train mode) and where to read its signature without
creating an instance. The worker (``cogd.runner``) and the schema command
(``cogd.schema``) both load through here, so they agree on what runs.
``cog.predictor`` offers Cog's names for the same: ``load_predictor_from_ref``,
``has_setup_weights``, ``extract_setup_weights``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cogd.decorators import declared_concurrency, declared_streaming
from cogd.types import Path, user_method_owner


class LoadError(Exception):
    """The predictor reference does not name something cogd can run."""


def load_predictor(ref: str, *, reuse: bool = False) -> Any:
    """Import ``FILE.py:NAME`` relative to the working directory and return ``NAME``.

    Without ``:NAME`` the module's ``Runner`` is taken, else its ``Predictor``,
    as Cog chooses (and warns as Cog does). With ``reuse``, a module already
    imported from that file that has ``NAME`` is used rather than run again
    (the worker describing its other mode's function from the same file).
    """
    path, sep, name = ref.rpartition(":")
    if not sep:
        path, name = ref, ""
    if not path or (sep and not name):
        raise LoadError(f"invalid predictor reference {ref!r}: expected FILE.py:NAME")
    if reuse and name:
        full = os.path.abspath(path)
        for module in list(sys.modules.values()):
            if getattr(module, "__file__", None) == full and hasattr(module, name):
                return getattr(module, name)
    module = _import_file(path)
    name = name or _default_class_name(module)
    try:
        return getattr(module, name)
    except AttributeError:
        raise LoadError(f"{path!r} has no attribute {name!r}") from None


def _import_file(path: str) -> types.ModuleType:
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise LoadError(f"predictor file {path!r} not found in {os.getcwd()}")
    module_name = os.path.splitext(os.path.basename(full))[0]
    # Model code imports its sibling modules by bare name, as it does under Cog.
    model_dir = os.path.dirname(full)
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    spec = importlib.util.spec_from_file_location(module_name, full)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _default_class_name(module: types.ModuleType) -> str:
    """``Runner`` when the module has a usable one, else ``Predictor``."""
    runner = getattr(module, "Runner", None)
    usable = callable(runner) and (
        not inspect.isclass(runner) or any(user_method_owner(runner, n) for n in ("run", "predict"))
    )
    if usable:
        if hasattr(module, "Predictor"):
            warnings.warn(
                "Both Runner and Predictor are defined; using Runner. Specify a class "
                "name explicitly if this is not intended.",
                UserWarning,
                stacklevel=2,
            )
        return "Runner"
    if hasattr(module, "Predictor"):
        warnings.warn("Predictor is deprecated; use Runner instead", DeprecationWarning, 2)
        return "Predictor"
    raise LoadError(f"module {module.__name__!r} has no Runner or Predictor")


def run_method_name(cls: type, mode: str = "predict") -> str:
    """Which method of a predictor class runs: ``train`` in train mode, else
    the model's own ``run`` or ``predict``.

    A class with both (Cog 0.16 and later refuse it) is an older model whose
    entry point was ``predict``, a ``run`` being its own helper: ``predict``
    runs, with a warning.
    """
    if mode == "train":
        if not callable(getattr(cls, "train", None)):
            raise LoadError(f"{cls.__name__} defines no train() method")
        return "train"
    has_run = user_method_owner(cls, "run") is not None
    has_predict = user_method_owner(cls, "predict") is not None
    if has_run and has_predict:
        print(
            f"cogd: {cls.__name__} defines both run() and predict(); running predict() "
            "(Cog 0.16 and later refuse this: keep one)",
            file=sys.stderr,
        )
        return "predict"
    if has_run:
        return "run"
    if has_predict:
        return "predict"
    raise LoadError(f"run or predict method not found: {cls.__name__}")


@dataclass(frozen=True)
class RunMethod:
    """What runs for a loaded model, found without creating an instance.

    ``function`` is what the signature is read from: the method as the class
    holds it (its first parameter is ``self`` when ``skip_self``), or the
    model's function itself. :meth:`bind` makes the instance that runs.
    """

    #: The class or function :func:`load_predictor` returned.
    predictor: Any
    #: The run method's name for a class (``run``, ``predict``, ``train``);
    #: ``None`` for a function.
    name: str | None
    function: Callable[..., Any]
    skip_self: bool

    def bind(self) -> tuple[Any, Callable[..., Any]]:
        """``(instance, its run method)`` for a class (instantiated here, its
        ``setup`` not yet run), ``(None, the function)`` for a function."""
        if self.name is None:
            return None, self.function
        instance = self.predictor()
        return instance, getattr(instance, self.name)


def find_run_method(predictor: Any, mode: str = "predict") -> RunMethod:
    """The :class:`RunMethod` of a predictor class or function.

    In ``train`` mode the class is a trainer: any class with ``train()`` (and
    an optional ``setup()``), as Cog's training interface has it.
    """
    if inspect.isclass(predictor):
        name = run_method_name(predictor, mode)
        function = getattr(predictor, name)
        # A plain function read from the class still takes `self`; a static
        # method, a class method (bound to the class) or a callable object not.
        static = isinstance(inspect.getattr_static(predictor, name), staticmethod)
        skip_self = inspect.isfunction(function) and not static
        return RunMethod(predictor, name, function, skip_self)
    if callable(predictor):
        return RunMethod(predictor, None, predictor, False)
    raise LoadError(f"{predictor!r} is neither a class nor a function")


def declared(run: Callable[..., Any], predictor: Any) -> tuple[int | None, bool]:
    """``(concurrency, streaming)`` as ``@concurrent`` and ``@streaming`` set
    them on the run method (or its function) or on the predictor class."""
    targets = (run, getattr(run, "__func__", None), predictor)
    return declared_concurrency(*targets), declared_streaming(*targets)


def check_batchable(run: Callable[..., Any], mode: str, streaming: bool) -> None:
    """Refuse ``@cog.batch`` where a run cannot take lists and give one
    output per prediction: training functions, generators, ``@streaming``."""
    name = getattr(run, "__qualname__", getattr(run, "__name__", "the run"))
    if mode == "train":
        raise LoadError(f"{name}: training functions cannot be batched; remove @cog.batch")
    if inspect.isgeneratorfunction(run) or inspect.isasyncgenfunction(run):
        raise LoadError(
            f"{name} is a generator, which cannot be batched: a batched run returns one "
            "list of outputs; remove @cog.batch or return instead of yielding"
        )
    if streaming:
        raise LoadError(
            f"{name} is marked @streaming, which cannot be batched; remove one of "
            "@cog.batch and @streaming"
        )


def load_predictor_from_ref(ref: str) -> Any:
    """Cog's loader: the model of ``FILE.py[:NAME]``, a class instantiated
    (its run method found as the worker finds it), a function as it is."""
    run = find_run_method(load_predictor(ref))
    return run.predictor if run.name is None else run.bind()[0]


def has_setup_weights(predictor: Any) -> bool:
    """Whether the model's ``setup`` takes a ``weights`` parameter."""
    setup = getattr(predictor, "setup", None)
    return setup is not None and "weights" in inspect.signature(setup).parameters


def extract_setup_weights(predictor: Any = None) -> Any:
    """What a ``setup(weights)`` parameter receives: ``COG_WEIGHTS`` (a URL),
    else ``Path("weights")`` when ``./weights`` exists, else ``None``."""
    del predictor  # Cog's signature; the answer does not depend on the model
    url = os.environ.get("COG_WEIGHTS")
    if url:
        return url
    if os.path.exists("weights"):
        return Path("weights")
    return None
