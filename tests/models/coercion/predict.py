"""Reports, for every input, the Python type and value the run received.

The output maps each input name to {"type": <class name>, "value": <JSON form>}.
A Secret is reported by its str() (masked) and the length of its value, never
the value. `gate` holds the run until that file exists, so a test can keep the
only slot busy.
"""

import os
import time
from typing import Optional, Union

from cog import BasePredictor, File, Input, Path, Secret


def report(value):
    if isinstance(value, Secret):
        secret = value.get_secret_value()
        return {"type": "Secret", "value": str(value), "length": len(secret or "")}
    if isinstance(value, os.PathLike):
        return {"type": type(value).__name__, "value": str(value)}
    if hasattr(value, "read"):
        return {"type": type(value).__name__, "value": value.read().decode()}
    if isinstance(value, list):
        return {"type": "list", "value": [report(v) for v in value]}
    return {"type": type(value).__name__, "value": value}


class Predictor(BasePredictor):
    def predict(
        self,
        text: str = Input(description="Required text", min_length=2, max_length=8),
        count: int = Input(default=5, ge=1, le=10),
        ratio: float = Input(default=0.5, ge=0, le=1),
        code: str = Input(default="ab1", regex=r"^[a-z]+[0-9]$"),
        color: str = Input(default="red", choices=["red", "green"]),
        size: int = Input(default=2, choices=[1, 2, 3]),
        flag: bool = False,
        maybe: Optional[int] = None,
        maybe_text: str | None = Input(default=None, description="May be left out"),
        either: Union[bool, int, float, str] = 0,
        numbers: list[float] = Input(default=[1, 2]),
        image: Path = Input(default=None),
        images: list[Path] = Input(default=[]),
        document: File = None,
        token: Secret = Input(default=None, description="Never logged"),
        gate: str = "",
    ) -> dict:
        if gate:
            deadline = time.monotonic() + 60
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        if token is not None:
            print(f"using token {token} ({token!r})")
        received = {
            "text": text,
            "count": count,
            "ratio": ratio,
            "code": code,
            "color": color,
            "size": size,
            "flag": flag,
            "maybe": maybe,
            "maybe_text": maybe_text,
            "either": either,
            "numbers": numbers,
            "image": image,
            "images": images,
            "document": document,
            "token": token,
        }
        return {name: report(value) for name, value in received.items()}
