"""``cog.predictor``: the runner bases and how a model is loaded from its reference."""

from cogd.loader import extract_setup_weights, has_setup_weights, load_predictor_from_ref
from cogd.types import BasePredictor, BaseRunner

__all__ = [
    "BasePredictor",
    "BaseRunner",
    "extract_setup_weights",
    "has_setup_weights",
    "load_predictor_from_ref",
]
