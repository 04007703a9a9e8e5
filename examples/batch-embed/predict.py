"""Text embeddings, a batch at a time: `@cog.batch` in a small real model.

Each text becomes counts of its hashed character trigrams (4,096 buckets),
which a fixed two-layer network (weights drawn once, in setup, from a seeded
generator) maps to a 256-dimensional unit vector. The network's first layer
is a 4,096 × 1,024 matrix: for one text, multiplying by it reads all 16 MiB
of it for 4 M multiply-adds; for a batch of 16, one matrix product reads it
once for all of them. So on a CPU a batch costs little more than one text.
"""

import zlib

import cog
import numpy as np
from cog import BasePredictor, Input

BUCKETS = 4096
HIDDEN = 1024
DIMENSIONS = 256


def trigram_counts(texts: list[str]) -> np.ndarray:
    """A (len(texts), BUCKETS) matrix of hashed character-trigram counts."""
    counts = np.zeros((len(texts), BUCKETS), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f"  {text.lower()} "
        for i in range(len(padded) - 2):
            counts[row, zlib.crc32(padded[i : i + 3].encode()) % BUCKETS] += 1.0
    return counts


def layer(rng: np.random.Generator, inputs: int, outputs: int) -> np.ndarray:
    """A float32 weight matrix scaled so outputs keep the inputs' scale."""
    weights = rng.standard_normal((inputs, outputs), dtype=np.float32)
    return weights * np.float32(1.0 / np.sqrt(inputs))


class Predictor(BasePredictor):
    def setup(self) -> None:
        rng = np.random.default_rng(20)
        self.w1 = layer(rng, BUCKETS, HIDDEN)
        self.w2 = layer(rng, HIDDEN, DIMENSIONS)

    @cog.batch(max_size=16, max_wait_ms=5)
    def predict(
        self,
        text: str = Input(description="Text to embed"),
        normalize: bool = Input(description="Scale the vector to length 1", default=True),
    ) -> list[float]:
        # `text` and `normalize` are lists here: one item per prediction.
        hidden = np.tanh(trigram_counts(text) @ self.w1)
        vectors = hidden @ self.w2
        lengths = np.linalg.norm(vectors, axis=1, keepdims=True)
        scale = np.where(np.array(normalize)[:, None], 1.0 / np.maximum(lengths, 1e-12), 1.0)
        return [[round(float(x), 6) for x in row] for row in vectors * scale]
