"""Runs a model inside the worker process.

``cogd._native`` (the Rust worker loop) creates one ``Runner`` per worker, calls
``load()`` (the model imported through ``cogd.loader``, its schema made by
``cogd.schema``) and ``setup()`` once on the main thread, then ``run()`` per prediction
from the slot's thread (slot 0 is the main thread), ``cancel()`` from the
control thread, and ``healthcheck()`` from the healthcheck thread. Async runs
share one event loop on its own thread; a sync run is canceled by a signal
(main thread) or an asynchronous exception (other threads). Each run gets a
``cogd.scope.Scope`` (its context and metrics), closed when it ends.
A ``@cog.batch`` model is called by ``run_batch`` with several predictions
at once: each parameter a list, one item per prediction, and one output (or
exception instance) per prediction back.
Values cross the boundary as JSON text (an output as a
``coercion.EncodedOutput``) so that the Rust side never has to walk Python
objects; what ``load()`` learns is a :class:`Loaded`. Model exceptions
propagate; the Rust side turns them into the prediction's error after the
traceback has been written to the run's logs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import inspect
import json
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from cogd import capture, coercion, schema
from cogd import scope as scopes
from cogd.decorators import BatchSettings, declared_batch
from cogd.loader import (
    check_batchable,
    declared,
    extract_setup_weights,
    find_run_method,
    load_predictor,
)
from cogd.signature import IteratorOf, ListOf, Signature
from cogd.types import CancelationException


@dataclass(frozen=True, slots=True)
class Loaded:
    """What :meth:`Runner.load` tells the worker about the model; ``cogd._native``
    reads it by these attribute names."""

    #: The concurrency the model declares (``@cog.concurrent(max=N)``).
    concurrency: int | None
    #: Whether its run is ``async def`` (or an async generator).
    is_async: bool
    #: Whether it is marked ``@streaming`` (or its pre-built schema says so).
    streaming: bool
    #: Whether it defines a ``healthcheck()``.
    healthcheck: bool
    #: Its ``@cog.batch`` settings; ``None`` when it is not batched.
    batch: BatchSettings | None = None


@dataclass(frozen=True, slots=True)
class MemberFailure:
    """One batch member's failure, in its place among the outputs
    :meth:`Runner.run_batch` returns; ``cogd._native`` reads ``error``."""

    #: The prediction's error, as ``ValueError: boom``.
    error: str


class _EventLoop:
    """The worker's one asyncio event loop, run in its own thread.

    Async setup and runs are submitted to it from the slot threads, so the loop is
    shared by every async run and never blocked by a sync one.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="cogd-asyncio", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and wait for its result from this thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


#: What ``_invoke`` returns for a generator: its items have been sent already.
_STREAMED = object()


class _ActiveRun:
    """What ``cancel`` needs to know about the run in one slot."""

    def __init__(self, output_dir: str, prediction_id: str, batch: tuple[str, ...] = ()) -> None:
        self.thread_id = threading.get_ident()
        self.prediction_id = prediction_id
        # A batch's members: a cancel naming any of them stops the whole call
        # (the server sends one only when every member is gone).
        self.ids = frozenset(batch or (prediction_id,))
        # The prediction's directory: file objects the run returns are copied here.
        self.output_dir = output_dir
        self.task: asyncio.Task[Any] | None = None
        self.canceled = False
        # Set once the run is inside the code that turns a cancel into its
        # end; before that a cancel signal is left to the check made there.
        self.armed = False
        self.raised = False
        self.done = False


class Runner:
    """One loaded model: ``load`` and ``setup`` once, then ``run`` per prediction."""

    def __init__(
        self, predictor_ref: str, mode: str = "predict", other_ref: str | None = None
    ) -> None:
        capture.install()
        self.predictor_ref = predictor_ref
        self.mode = mode
        # The other mode's function, which the schema document describes too.
        self.other_ref = other_ref
        self._instance: Any = None
        self._run: Callable[..., Any] | None = None
        # The run method's inputs and output (cogd.signature), and the schema
        # document (cogd.schema).
        self._signature: Signature | None = None
        self._schema_json = "null"
        self._loop: _EventLoop | None = None
        # Whether the run method is ``async def`` (or an async generator): known
        # once loaded, so each run need not inspect it again.
        self._is_async = False
        # ``@cog.batch``'s settings when the run is batched: known once loaded.
        self._batch: BatchSettings | None = None
        self._active: dict[int, _ActiveRun] = {}
        # Cancels that came before their run, by slot: the prediction id. A
        # cancel comes on the control channel and its run on the slot socket,
        # so it can overtake the run; the run it names ends as it starts.
        self._early_cancels: dict[int, str] = {}
        self._lock = threading.Lock()
        if threading.current_thread() is threading.main_thread():
            # Slot 0 runs on the main thread; a signal is what interrupts a
            # blocking call there (time.sleep, a socket read) to cancel it.
            signal.signal(signal.SIGUSR1, self._on_cancel_signal)
            # Ctrl-C in a terminal reaches the whole process group; the server
            # decides what happens to runs, not the model's code.
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return self._event_loop().run(fn(**kwargs))
        return fn(**kwargs)

    def _event_loop(self) -> _EventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = _EventLoop()
            return self._loop

    def load(self) -> Loaded:
        """Import the model, find its run method and read its signature."""
        try:
            predictor = load_predictor(self.predictor_ref)
            self._instance, self._run = find_run_method(predictor, self.mode).bind()
            concurrency, streaming = declared(self._run, predictor)
            self._batch = declared_batch(self._run, getattr(self._run, "__func__", None), predictor)
            if self._batch is not None:
                check_batchable(self._run, self.mode, streaming)
            # Before the model's setup: a signature the schema cannot express
            # fails at once, naming the parameter, not after the weights load.
            self._signature, self._schema_json = schema.prepare(
                self._run, self.mode, streaming=streaming, other_ref=self.other_ref
            )
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            _flush_std_streams()
        run = self._run
        self._is_async = inspect.iscoroutinefunction(run) or inspect.isasyncgenfunction(run)
        return Loaded(
            concurrency=concurrency,
            is_async=self._is_async,
            # A pre-built schema (made by Cog's tools) says so by its extension.
            streaming=streaming or schema.marks_streaming(self._schema_json),
            healthcheck=callable(getattr(self._instance, "healthcheck", None)),
            batch=self._batch,
        )

    def setup(self) -> str:
        """Run the model's ``setup``; returns the schema as JSON text."""
        try:
            setup = getattr(self._instance, "setup", None)
            if setup is not None:
                kwargs = {}
                if "weights" in inspect.signature(setup).parameters:
                    kwargs["weights"] = extract_setup_weights()
                self._call(setup, **kwargs)
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            _flush_std_streams()
        return self._schema_json

    def run(
        self,
        inputs: dict[str, Any],
        context_json: str,
        output_dir: str,
        slot: int = 0,
        prediction_id: str = "",
    ) -> coercion.EncodedOutput | None:
        """Run one prediction on ``inputs`` (the validated input object, which
        the Rust side has already read from JSON).

        Returns the output as JSON (``coercion.output_json``), or ``None`` for
        a generator, whose items were each sent as they were yielded. Raises
        ``CancelationException`` when the run was canceled.
        """
        assert self._run is not None and self._signature is not None, "run() before load()"
        active = _ActiveRun(output_dir, prediction_id)
        with self._running(slot, active, context_json) as scope:
            active.armed = True
            if active.canceled:
                # Cancelled before it began: the model's code never runs.
                raise CancelationException()
            kwargs = coercion.coerce_inputs(self._signature, inputs)
            output = self._invoke(slot, active, kwargs, scope)
            if active.canceled:
                # The run swallowed the cancel and returned: it is still canceled.
                raise CancelationException()
            if output is _STREAMED:
                return None
            return coercion.output_json(
                self._signature.output, output, self._call, active.output_dir
            )

    @contextlib.contextmanager
    def _running(self, slot: int, active: _ActiveRun, context_json: str) -> Iterator[scopes.Scope]:
        """``active`` as the run in ``slot`` for the ``with`` block (one
        prediction's, or one batch's), with its capture slot and its scope.

        A cancel that came before the run (for any of its ids) marks it
        canceled at once. An exception other than a cancel is printed to the
        run's logs as it leaves. On the way out the run is done (a cancel
        signal from then on raises nothing), leaves its slot, and closes its
        scope: tasks the run left behind keep it, and closed it records nothing.
        """
        with self._lock:
            self._active[slot] = active
            if self._early_cancels.pop(slot, None) in active.ids:
                active.canceled = True
        token = capture.current_slot.set(slot)
        context = json.loads(context_json) if context_json and context_json != "{}" else {}
        scope = scopes.Scope(slot, context)
        scope_token = scopes.current.set(scope)
        try:
            yield scope
        except CancelationException:
            raise
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            active.done = True
            with self._lock:
                if self._active.get(slot) is active:
                    del self._active[slot]
            scope._close()
            scopes.current.reset(scope_token)
            _flush_std_streams()
            capture.current_slot.reset(token)

    def run_batch(
        self, members: list[tuple[dict[str, Any], str, str, str]], slot: int = 0
    ) -> list[coercion.EncodedOutput | MemberFailure]:
        """Run a ``@cog.batch`` model once for several predictions.

        ``members`` holds each prediction's ``(inputs, context JSON, output
        directory, id)``. Each parameter receives a list with one item per
        prediction whose inputs could be coerced (one whose inputs cannot
        fails alone). Returns one result per member, in order: its output's
        JSON, or a :class:`MemberFailure` (an exception instance the run put
        in its place, or one its output raised when encoded). A raised
        exception, or a returned list of the wrong length, fails the whole
        batch (it propagates); ``CancelationException`` when it was canceled.
        The run's scope has the first member's context; metrics it records
        and lines it prints belong to every member.
        """
        assert self._run is not None and self._signature is not None, "run_batch() before load()"
        ids = tuple(member[3] for member in members)
        active = _ActiveRun(members[0][2], ids[0], ids)
        results: list[coercion.EncodedOutput | MemberFailure] = []
        with self._running(slot, active, members[0][1]) as scope:
            active.armed = True
            if active.canceled:
                raise CancelationException()
            # Coerced one by one, so a member whose inputs cannot be fails alone.
            live: list[tuple[int, dict[str, Any]]] = []
            for index, (inputs, _, _, _) in enumerate(members):
                try:
                    live.append((index, coercion.coerce_inputs(self._signature, inputs)))
                    results.append(MemberFailure("not run"))
                except Exception as e:
                    results.append(MemberFailure(_describe(e)))
            if not live:
                return results
            kwargs = {
                spec.name: [member[spec.name] for _, member in live]
                for spec in self._signature.inputs
            }
            outputs = self._invoke(slot, active, kwargs, scope)
            if active.canceled:
                raise CancelationException()
            if not isinstance(outputs, (list, tuple)) or len(outputs) != len(live):
                size = len(outputs) if isinstance(outputs, (list, tuple)) else None
                raise ValueError(
                    f"a batched run must return a list of one output per prediction: "
                    f"it returned {_batch_result(outputs, size)} for a batch of {len(live)}"
                )
            for (index, _), output in zip(live, outputs, strict=True):
                results[index] = self._member_output(output, members[index][2])
            return results

    def _member_output(
        self, output: Any, output_dir: str
    ) -> coercion.EncodedOutput | MemberFailure:
        """One batch member's result: its failure, or its output's JSON."""
        assert self._signature is not None
        if isinstance(output, BaseException):
            return MemberFailure(_describe(output))
        try:
            return coercion.output_json(self._signature.output, output, self._call, output_dir)
        except Exception as e:
            return MemberFailure(_describe(e))

    def _invoke(
        self, slot: int, active: _ActiveRun, kwargs: dict[str, Any], scope: scopes.Scope
    ) -> Any:
        run = self._run
        assert run is not None
        if self._is_async:

            async def call() -> Any:
                # Set inside the task, so tasks it spawns inherit them too.
                capture.current_slot.set(slot)
                scopes.current.set(scope)
                active.task = asyncio.current_task()
                if active.canceled:
                    raise asyncio.CancelledError()
                result = run(**kwargs)
                if inspect.isasyncgen(result):
                    index = 0
                    async for item in result:
                        self._send_chunk(slot, active, index, item)
                        index += 1
                    return _STREAMED
                return await result

            future = asyncio.run_coroutine_threadsafe(call(), self._event_loop().loop)
            try:
                return future.result()
            except (asyncio.CancelledError, concurrent.futures.CancelledError):
                raise CancelationException() from None
        output = run(**kwargs)
        if inspect.isgenerator(output):
            for index, item in enumerate(output):
                self._send_chunk(slot, active, index, item)
            return _STREAMED
        return output

    def _send_chunk(self, slot: int, active: _ActiveRun, index: int, item: Any) -> None:
        """Send one yielded item to the server now, before the next is produced."""
        from cogd import _native

        assert self._signature is not None
        node = self._signature.output
        # A generator's items are checked against the declared item type.
        if isinstance(node, (IteratorOf, ListOf)):
            node = node.item
        _native.write_output(
            slot, index, coercion.output_json(node, item, self._call, active.output_dir)
        )

    def cancel(self, slot: int, prediction_id: str = "") -> None:
        """Stop the run of ``prediction_id`` in ``slot``: cancel its task, or
        raise inside its thread; if it has not begun, it ends as it begins."""
        with self._lock:
            active = self._active.get(slot)
            if active is None or prediction_id not in active.ids:
                # Not begun yet (or over, and then no run will have this id).
                self._early_cancels[slot] = prediction_id
                return
            if active.done or active.canceled:
                return
            active.canceled = True
            task = active.task
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)
        elif self._is_async:
            pass  # the task has not started; it checks `canceled` first thing
        elif active.thread_id == threading.main_thread().ident:
            threading.Thread(
                target=_interrupt, args=(active,), name="cogd-cancel", daemon=True
            ).start()
        else:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(active.thread_id), ctypes.py_object(CancelationException)
            )

    def healthcheck(self) -> str | None:
        """Call the model's ``healthcheck()``: ``None`` when healthy, else why
        not, in Cog's words (the server puts ``Healthcheck failed:`` before
        them). Only ``False`` or an exception is unhealthy: any other value
        (``None`` from a check that forgot its ``return``) is healthy, as in Cog.

        Called from the worker's healthcheck thread, while runs may be in
        progress: a sync check runs in that thread, an async one on the event
        loop. What it prints goes to the server's log, never to a prediction's.
        """
        check = getattr(self._instance, "healthcheck", None)
        if check is None:
            return None
        token = capture.detached.set(True)
        try:
            if inspect.iscoroutinefunction(check):

                async def call() -> Any:
                    capture.detached.set(True)
                    return await check()

                result = self._event_loop().run(call())
            else:
                result = check()
        except Exception as e:
            # In one write, so the server logs the traceback as one message.
            sys.stderr.write(f"healthcheck() raised:\n{traceback.format_exc()}")
            return f"{type(e).__name__}: {e}"
        finally:
            _flush_std_streams()
            capture.detached.reset(token)
        if result is False:
            return "user-defined healthcheck returned False"
        return None

    def _on_cancel_signal(self, signum: int, frame: Any) -> None:
        # Without the lock: this runs on the main thread between any two of its
        # bytecodes, perhaps while that thread holds the lock. The flags it
        # reads were set before the signal was sent, and only it sets `raised`.
        del signum, frame
        active = self._active.get(0)
        if active is None or not active.armed or not active.canceled:
            return
        if active.done or active.raised:
            return
        active.raised = True
        raise CancelationException()


def _describe(error: BaseException) -> str:
    """``ValueError: boom``: how a failed prediction's error reads."""
    message = str(error)
    name = type(error).__name__
    return f"{name}: {message}" if message else name


def _batch_result(outputs: Any, size: int | None) -> str:
    if size is None:
        return f"a {type(outputs).__name__}"
    return f"{size} output" + ("" if size == 1 else "s")


def _interrupt(active: _ActiveRun) -> None:
    """Signal the main thread until its canceled run has raised or ended.

    One signal is not enough: one that arrives after the thread's last check
    for signals and before it enters a blocking call (``time.sleep``) is only
    handled when that call returns. Sent again, at growing intervals (a run
    deaf to signals costs little), it interrupts the call.
    """
    interval = 0.01
    while not active.done and not active.raised:
        signal.pthread_kill(active.thread_id, signal.SIGUSR1)
        time.sleep(interval)
        interval = min(interval * 2, 1.0)


def _flush_std_streams() -> None:
    """Push buffered Python output into fd 1 and 2 so it lands in the right logs."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
