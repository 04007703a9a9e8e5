"""Reads its file inputs and reports what the run saw: name, size, text."""

import os

from cog import BasePredictor, File, Input, Path


def describe(path):
    with open(path, "rb") as f:
        data = f.read()
    return {
        "name": os.path.basename(path),
        "dir": os.path.dirname(os.path.abspath(path)),
        "size": len(data),
        "text": data[:64].decode("utf-8", "replace"),
    }


class Predictor(BasePredictor):
    def predict(
        self,
        file: Path = Input(default=None),
        files: list[Path] = Input(default=[]),
        handle: File = None,
        url_text: str = "",
    ) -> dict:
        return {
            "file": describe(file) if file is not None else None,
            "files": [describe(f) for f in files],
            "handle": handle.read().decode() if handle is not None else None,
            # A plain string that looks like a URL is passed through untouched.
            "url_text": url_text,
        }
