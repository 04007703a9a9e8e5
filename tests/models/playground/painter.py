"""Paints a PNG in one colour, fading to white (served with
COG_PREDICT_TYPE_STUB=painter.py:Predictor).

The PNG is written by hand (zlib and a CRC per chunk), so the model needs
nothing beyond the standard library.
"""

import struct
import tempfile
import zlib

from cog import BasePredictor, Input, Path


def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """`rgb` at the top, fading to white at the bottom."""
    rows = b""
    for y in range(height):
        fade = y / max(height - 1, 1)
        pixel = bytes(round(c + (255 - c) * fade) for c in rgb)
        rows += b"\x00" + pixel * width  # filter type 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class Predictor(BasePredictor):
    def predict(
        self,
        width: int = Input(default=24, ge=1, le=512),
        height: int = Input(default=16, ge=1, le=512),
        color: str = Input(default="ff0000", regex=r"^[0-9a-fA-F]{6}$"),
    ) -> Path:
        rgb = (int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16))
        path = Path(tempfile.mkdtemp(prefix="painter-")) / "painting.png"
        path.write_bytes(png(width, height, rgb))
        return path
