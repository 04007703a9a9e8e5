"""Models that record custom metrics, for tests/test_metrics.py.

`Predictor` (sync) runs the scenario its `scenario` input names and returns
what it saw (metrics read back through `self.scope.metrics`, errors raised as
`[exception type, message]`):

- modes:   replace, incr and append, through both `record_metric` spellings;
- increment: the mode spelled "increment", as Cog's runtime also takes it;
- nested:  dotted names, set and read back;
- errors:  every way to break a rule; nothing is recorded by them;
- delete:  `None` and `del`, then a new type for a deleted metric;
- context: `current_scope().context`;
- setup:   what setup saw of the scope (it records, which must be a no-op);
- hold:    record `stage=1`, wait for the `gate` file, record `stage=2`;
- fail:    record `recorded=True`, then raise.

`AsyncPredictor` records from tasks it spawns and leaves one behind that
records `lingering` seconds later, after the run (which sleeps `hold` seconds
at the end) has returned. `StreamingPredictor` counts its chunks.
"""

import asyncio
import math
import os
import time
from collections.abc import Iterator

import cog
from cog import BasePredictor, current_scope

GATE_TIMEOUT_S = 60.0


def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.01)


def attempt(fn) -> list | None:
    """[exception type, message] of what fn() raised, or None."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test looks at the type
        return [type(e).__name__, str(e)]
    return None


class Predictor(BasePredictor):
    def setup(self) -> None:
        # Outside a run: silently nothing, whatever the name or value.
        self.record_metric("setup_metric", 1)
        self.record_metric("not a valid name", object())
        current_scope().metrics["x"] = 1
        del current_scope().metrics["x"]
        self.seen_in_setup = {
            "context": current_scope().context,
            "metrics": dict(self.scope.metrics),
        }

    def predict(self, scenario: str = "modes", gate: str = "") -> dict:
        metrics = self.scope.metrics
        if scenario == "modes":
            self.record_metric("label", "first")
            self.record_metric("label", "second")
            for _ in range(3):
                self.record_metric("tokens", 1, mode="incr")
            current_scope().record_metric("tokens", 0.5, "incr")
            self.record_metric("steps", "load", mode="append")
            metrics.record("steps", "run", mode="append")
            metrics["flag"] = True
            return dict(metrics)
        if scenario == "increment":
            # Cog's runtime takes "increment" as well as "incr".
            self.record_metric("tokens", 2, mode="increment")
            current_scope().record_metric("tokens", 1, "increment")
            metrics.record("tokens", 1, mode="incr")
            return dict(metrics)
        if scenario == "nested":
            self.record_metric("timing.preprocess", 0.25)
            self.record_metric("timing.inference", 1.5)
            metrics["timing.gpu.util"] = 80
            self.record_metric("timing.gpu.calls", 2, mode="incr")
            return {
                "timing": metrics["timing"],
                "gpu": metrics["timing.gpu"],
                "util": metrics["timing.gpu.util"],
                "missing": metrics.get("timing.nothing", "absent"),
                "in": ["timing.gpu" in metrics, "timing.x" in metrics],
            }
        if scenario == "errors":
            self.record_metric("count", 1)
            self.record_metric("nest.leaf", 1)
            bad_names = [
                "",
                "1abc",
                "_invalid",
                "a_",
                "a__b",
                "a-b",
                ".a",
                "a..b",
                "a.",
                "a.b.c.d.e",
                "x" * 129,
            ]
            reserved = ["predict_time", "predict_time.x", "cog.version"]
            return {
                "bad_names": {n: attempt(lambda n=n: self.record_metric(n, 1)) for n in bad_names},
                "reserved": {n: attempt(lambda n=n: self.record_metric(n, 1)) for n in reserved},
                "longest_ok": attempt(lambda: self.record_metric("y" * 128, 1)),
                "type_change": attempt(lambda: self.record_metric("count", "one")),
                "bool_for_number": attempt(lambda: metrics.__setitem__("count", True)),
                "incr_a_str": attempt(lambda: self.record_metric("label", "x", "incr")),
                "incr_on_str": attempt(
                    lambda: (self.record_metric("s", "x"), self.record_metric("s", 1, "incr"))
                ),
                "append_to_number": attempt(lambda: self.record_metric("count", 2, "append")),
                "leaf_as_parent": attempt(lambda: self.record_metric("count.sub", 1)),
                "parent_as_leaf": attempt(lambda: self.record_metric("nest", 5)),
                "bad_mode": attempt(lambda: self.record_metric("count", 1, "decr")),
                "not_json": attempt(lambda: self.record_metric("count", {1, 2})),
                "nan": attempt(lambda: self.record_metric("count", math.nan)),
                "metrics": dict(metrics),
            }
        if scenario == "delete":
            self.record_metric("a", 1)
            self.record_metric("b.c", 2)
            self.record_metric("b.d", 3)
            self.record_metric("e", 4)
            self.record_metric("gone.deep.leaf", 5)
            metrics["a"] = None
            del metrics["b.c"]
            self.record_metric("e", None)
            del metrics["gone.deep.leaf"]
            del metrics["never.there"]
            # Deleted, so it may come back as another type.
            self.record_metric("a", "now a string")
            return dict(metrics)
        if scenario == "context":
            return {"scope": current_scope().context, "self": self.scope.context}
        if scenario == "setup":
            return self.seen_in_setup
        if scenario == "hold":
            self.record_metric("stage", 1)
            wait_for_file(gate)
            self.record_metric("stage", 2)
            return dict(metrics)
        if scenario == "fail":
            self.record_metric("recorded", True)
            raise RuntimeError("failed after recording")
        raise ValueError(f"unknown scenario {scenario!r}")


def record_from_anywhere(name: str) -> None:
    """Model code that has no `self`: it finds the run through current_scope()."""
    cog.current_scope().record_metric("hits", 1, mode="incr")
    cog.current_scope().record_metric("by_task", name, mode="append")


class AsyncPredictor(BasePredictor):
    async def predict(self, lingering: float = 0.3, hold: float = 0.0) -> dict:
        async def task(name: str) -> dict:
            await asyncio.sleep(0.01)
            record_from_anywhere(name)
            return current_scope().context

        contexts = await asyncio.gather(*(task(f"t{i}") for i in range(3)))

        async def late() -> None:
            # Runs on after the run has returned: its scope is closed by then.
            await asyncio.sleep(lingering)
            current_scope().record_metric("late", 1)

        self.left_behind = asyncio.create_task(late())
        await asyncio.sleep(hold)
        return {"contexts": contexts, "by_task": sorted(self.scope.metrics["by_task"])}


class StreamingPredictor(BasePredictor):
    @cog.streaming
    def predict(self, chunks: int = 3) -> Iterator[str]:
        for i in range(chunks):
            self.record_metric("chunks", 1, mode="incr")
            yield f"c{i}"
        self.record_metric("done", True)
