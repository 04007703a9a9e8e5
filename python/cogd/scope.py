"""What a run can see of its own prediction: ``current_scope()``.

A run's ``Scope`` carries the request's ``context`` and the run's custom
``metrics``. The runner makes one per run and sets it in a context variable
for the run's thread or task, so tasks the run starts inherit it, and closes
it when the run ends. Anywhere else (setup, the healthcheck, a thread started
by hand, a task that outlives its run) ``current_scope()`` is an inert scope:
it has no context and its records do nothing, so model code never needs to ask
whether it runs inside a prediction.

The rules for metrics (names, modes, types, nesting) are implemented once, in
Rust (``cogd::metrics``), and shared with the server: ``_native.record_metric``
applies each record to the run's metrics, raises ``ValueError`` or
``TypeError`` when it breaks a rule, and sends it to the server at once, so it
reaches the prediction's ``metrics``, its webhooks and its stream while the run
goes on. Nothing here computes a metric's value.
"""

from __future__ import annotations

import contextvars
import json
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

__all__ = ["Metrics", "Scope", "current_scope"]


class Metrics(MutableMapping[str, Any]):
    """``scope.metrics``: the run's custom metrics, as a dict.

    ``metrics[name] = value`` replaces (``None`` deletes), ``del metrics[name]``
    deletes (an absent metric is no error), ``metrics[name]`` reads; names
    with dots reach into nested metrics (``metrics["timing.inference"]``).
    ``record(name, value, mode)`` also adds (``"incr"``, or ``"increment"``)
    or appends (``"append"``).
    """

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def record(self, name: str, value: Any, mode: str = "replace") -> None:
        """Record ``value`` for metric ``name``; see ``Scope.record_metric``."""
        self._scope._record(name, value, mode)

    def __setitem__(self, name: str, value: Any) -> None:
        self._scope._record(name, value, "replace")

    def __delitem__(self, name: str) -> None:
        self._scope._record(name, None, "replace")

    def __getitem__(self, name: str) -> Any:
        text = self._scope._read(name)
        if text is None:
            raise KeyError(name)
        return json.loads(text)

    def _all(self) -> dict[str, Any]:
        text = self._scope._read(None)
        return json.loads(text) if text is not None else {}

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"Metrics({self._all()!r})"


class Scope:
    """One run's view of its prediction: ``context`` and ``metrics``."""

    def __init__(self, slot: int | None, context: dict[str, Any]) -> None:
        #: The request's ``context`` (``{}`` outside a run).
        self.context = context
        #: The run's custom metrics.
        self.metrics = Metrics(self)
        self._slot = slot
        # Held while a record is applied and sent, and by ``_close``, so no
        # record can slip out after the run has ended.
        self._lock = threading.Lock()
        self._open = slot is not None

    def record_metric(self, name: str, value: Any, mode: str = "replace") -> None:
        """Record a custom metric of this prediction.

        ``mode`` is ``"replace"`` (the default; ``None`` deletes the metric),
        ``"incr"`` (also spelled ``"increment"``: add a number; an absent
        metric counts as 0) or ``"append"`` (add an item to a list; an absent
        metric counts as ``[]``). Dots in ``name`` nest: ``"timing.inference"``
        is ``{"timing": {"inference": ...}}``. Raises ``ValueError`` for a bad
        name or value (in Cog's words: one message per naming rule) and
        ``TypeError`` for a bad mode or when the value would change the
        metric's type (delete it first). Outside a run, does nothing.
        """
        self._record(name, value, mode)

    def _record(self, name: str, value: Any, mode: str) -> None:
        with self._lock:
            if not self._open:
                return
            try:
                text = json.dumps(value, allow_nan=False)
            except ValueError as e:
                raise ValueError(f'metric "{name}": the value must be finite: {e}') from None
            except TypeError as e:
                raise TypeError(
                    f'metric "{name}": the value must be None, a bool, int, float, str, '
                    f"or a list or dict of them: {e}"
                ) from None
            from cogd import _native

            assert self._slot is not None
            _native.record_metric(self._slot, name, text, mode)

    def _read(self, name: str | None) -> str | None:
        with self._lock:
            if not self._open:
                return None
            from cogd import _native

            assert self._slot is not None
            return _native.read_metric(self._slot, name)

    def _close(self) -> None:
        """The run has ended: from now on this scope records nothing."""
        with self._lock:
            self._open = False

    def __repr__(self) -> str:
        state = f"slot {self._slot}" if self._open else "inert"
        return f"<Scope {state} context={self.context!r}>"


#: The scope of the run the current code belongs to; set by the runner for
#: the run's thread or task, and inherited by tasks the run starts.
current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "cogd_current_scope", default=None
)


def current_scope() -> Scope:
    """The scope of the run this code belongs to, or an inert one outside a run."""
    scope = current.get()
    return scope if scope is not None else Scope(None, {})


class ScopeAttribute:
    """``self.scope`` on a runner: ``current_scope()``, read when accessed.

    A non-data descriptor, so a model that assigns its own ``self.scope``
    simply gets its own attribute, as it did before this existed.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return current_scope()
