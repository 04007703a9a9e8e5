"""Types of ``cogd._native``, the Rust half of the package (crates/cogd-python)."""

from os import PathLike

from cogd.coercion import EncodedOutput

__all__ = [
    "main",
    "run_worker",
    "write_log",
    "write_output",
    "record_metric",
    "read_metric",
    "__version__",
]

#: cogd's version, from the workspace's Cargo.toml.
__version__: str

def main(argv: list[str], python: str | PathLike[str]) -> int:
    """Run the ``cogd`` command line; ``python`` is the interpreter workers use."""

def run_worker() -> int:
    """Run the worker until the server stops it; returns the exit code."""

def write_log(source: str, data: str, slot: int | None = None, detached: bool = False) -> bool:
    """Route text written to ``sys.stdout`` or ``sys.stderr`` to the logs."""

def write_output(slot: int, index: int, output: EncodedOutput) -> bool:
    """Send one chunk of the streaming run in ``slot`` to the server."""

def record_metric(slot: int, name: str, value: str, mode: str) -> bool:
    """Record a custom metric (its value as JSON text) for the run in ``slot``."""

def read_metric(slot: int, name: str | None = None) -> str | None:
    """The run in ``slot``'s metric at ``name`` (all of them for ``None``) as JSON text."""
