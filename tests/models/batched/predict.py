"""A batched model (`@cog.batch(max_size=4, max_wait_ms=50)`) for the batching tests.

Each call records its batch: it appends one line of JSON (the batch's size and
its texts) to the file `log` names (when given; the first member's `log`), and
prints "batch:<size>:<texts joined by ,>", so every member's logs show it.
Then it waits until the first member's `gate` file exists (when given),
touching `started` first (when given). Each member's `mode` picks its own result:

- ok:    {"text": "<text>:<size>"}
- fail:  a ValueError("bad <text>") instance in its place (fails it alone)
- raise: the whole call raises RuntimeError("the batch broke")
- short: the call returns one output too few
- file:  {"text": ..., "file": a file named "<text>.txt" holding the text of
         the member's `file` input (or its `text`)}
"""

import json
import os
import tempfile
import time

import cog
from cog import BaseModel, BasePredictor, Input, Path

GATE_TIMEOUT_S = 60.0


def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.01)


class Output(BaseModel):
    text: str
    file: Path | None = None


class Predictor(BasePredictor):
    @cog.batch(max_size=4, max_wait_ms=50)
    def predict(
        self,
        text: str = Input(description="A token naming this prediction"),
        mode: str = Input(default="ok", choices=["ok", "fail", "raise", "short", "file"]),
        file: Path | None = Input(default=None),
        log: str = Input(default=""),
        gate: str = Input(default=""),
        started: str = Input(default=""),
    ) -> Output:
        size = len(text)
        assert all(isinstance(t, str) for t in text), text
        if log[0]:
            with open(log[0], "a") as f:
                f.write(json.dumps({"size": size, "texts": text}) + "\n")
        print(f"batch:{size}:{','.join(text)}")
        if started[0]:
            open(started[0], "w").close()
        if gate[0]:
            wait_for_file(gate[0])
        if "raise" in mode:
            raise RuntimeError("the batch broke")
        outputs = []
        for t, m, f in zip(text, mode, file, strict=True):
            if m == "fail":
                outputs.append(ValueError(f"bad {t}"))
            elif m == "file":
                content = f.read_text() if f is not None else t
                out = os.path.join(tempfile.mkdtemp(), f"{t}.txt")
                with open(out, "w") as handle:
                    handle.write(content)
                outputs.append(Output(text=f"{t}:{size}", file=Path(out)))
            else:
                outputs.append(Output(text=f"{t}:{size}"))
        if "short" in mode:
            outputs.pop()
        return outputs
