"""The sans-I/O protocol between repository operations and their two drivers.

Every multi-step repository operation (an auto-id ``create``, ``get_or_create``,
the compare-and-set loop of ``update_with``, the lease protocol of
``get_or_load``, batch writes with signals, ...) is written once, in
:mod:`cacheorm._core`, as a generator. It never touches a backend, a clock it
sleeps on, or a user function's awaitable: it *yields* a request saying what
it needs and gets the answer sent back in (or the exception thrown in):

* :class:`Call`: a backend method and its arguments (``Call("add", (key, payload, ttl))``);
* :class:`Sleep`: a back-off between retries;
* :class:`Await`: a user function (loader, update function, signal receiver)
  returned an awaitable;
* :class:`Flight`: run a sub-operation once per key in this process (the
  single-flight of ``get_or_load``), other callers waiting for its result.

:func:`drive` runs an operation on a sync :class:`~cacheorm.Backend` (blocking
calls, ``time.sleep``, threads waiting on a ``threading.Event``); :func:`adrive`
runs the very same generator on an :class:`~cacheorm.AsyncBackend` (awaited
calls, ``asyncio.sleep``, tasks waiting on an ``asyncio.Event``). Those two
loops are the only code that differs between ``Repository`` and
``AsyncRepository`` beyond one-line method bodies.

Cancellation: an ``asyncio.CancelledError`` raised by an awaited backend call
is thrown into the operation like any other exception, so its ``finally``
blocks (releasing a lease) run, and may still yield requests, which the async
driver completes before the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from cacheorm._errors import ConfigurationError

if TYPE_CHECKING:
    from cacheorm._flight import AsyncSingleFlight, SingleFlight

__all__ = [
    "Await",
    "Call",
    "Cleanup",
    "Flight",
    "Iterate",
    "Next",
    "Op",
    "Sleep",
    "adrive",
    "drive",
    "settle",
]

R = TypeVar("R")


class Call:
    """Request: call backend method ``method`` with ``args``; its result is sent back."""

    __slots__ = ("args", "method")

    def __init__(self, method: str, args: tuple[Any, ...]) -> None:
        self.method = method
        self.args = args

    def __repr__(self) -> str:
        return f"Call({self.method!r}, {self.args!r})"


class Cleanup(Call):
    """Request: a backend call that must run to its end, cancelled or not (freeing a lease).

    A cancellation that arrives while the async driver awaits it is held back:
    the call finishes, its result goes to the operation, and the
    ``CancelledError`` is raised at the operation's next request that is not
    a cleanup (or at its end). So a ``finally`` that frees a lease frees it.
    """

    __slots__ = ()


class Iterate:
    """Request: the iterator backend method ``method`` returns (``scan``), not awaited."""

    __slots__ = ("args", "method")

    def __init__(self, method: str, args: tuple[Any, ...]) -> None:
        self.method = method
        self.args = args


class Next:
    """Request: the next item of an iterator from :class:`Iterate`, or None at its end."""

    __slots__ = ("iterator",)

    def __init__(self, iterator: Any) -> None:
        self.iterator = iterator


class Sleep:
    """Request: wait ``seconds`` (a retry's back-off)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Await:
    """Request: a user function returned ``awaitable``; send back what it resolves to.

    The sync driver cannot await: it closes the awaitable and raises a
    :class:`~cacheorm.ConfigurationError` with ``on_sync`` (which says which
    function was async and to use ``AsyncRepository``).
    """

    __slots__ = ("awaitable", "on_sync")

    def __init__(self, awaitable: Awaitable[Any], on_sync: str) -> None:
        self.awaitable = awaitable
        self.on_sync = on_sync


class Flight(Generic[R]):
    """Request: ``leader()``'s operation, run once per ``key`` in this process.

    A caller that finds a flight for ``key`` under way waits for its result
    (or exception) for at most ``timeout`` seconds, then runs ``fallback()``'s
    operation instead; so does one whose leader was cancelled.
    """

    __slots__ = ("fallback", "key", "leader", "timeout")

    def __init__(
        self,
        key: str,
        leader: Callable[[], Op[R]],
        timeout: float,
        fallback: Callable[[], Op[R]],
    ) -> None:
        self.key = key
        self.leader = leader
        self.timeout = timeout
        self.fallback = fallback


#: A repository operation: yields requests, gets their results, returns ``R``.
Op = Generator["Call | Iterate | Next | Sleep | Await | Flight[Any]", Any, R]


def settle(result: R | Awaitable[R], on_sync: str) -> Op[R]:
    """``result`` itself, or what it resolves to if a user function returned an awaitable."""
    if result is not None and inspect.isawaitable(result):
        resolved: R = yield Await(result, on_sync)
        return resolved
    return result


class _Runtime:
    """How a driver performs each kind of request: blocking (sync) or returning awaitables."""

    __slots__ = ("backend", "cleanup", "deferred", "flight", "next", "sleep", "suspends", "wait")

    def __init__(
        self,
        backend: Any,
        next_: Callable[[Any], Any],
        sleep: Callable[[float], Any],
        wait: Callable[[Await], Any],
        flight: Callable[[_Runtime, Flight[Any]], Any],
        suspends: bool,
    ) -> None:
        self.backend = backend
        self.next = next_
        self.sleep = sleep
        self.wait = wait
        self.flight = flight
        #: True: what each request gives is an awaitable to await (the async driver).
        self.suspends = suspends
        #: How a Cleanup call's outcome is awaited (async: to its end, despite a cancellation).
        self.cleanup: Callable[[_Runtime, Any], Any] = _to_the_end if suspends else _as_is
        #: A cancellation held back while a Cleanup call ran: raised at the next request.
        self.deferred: BaseException | None = None


async def _loop(op: Op[R], runtime: _Runtime) -> R:
    """The one driver loop. On a sync runtime it never suspends (see :func:`drive`)."""
    send: Any = None
    error: BaseException | None = None
    backend, suspends = runtime.backend, runtime.suspends
    while True:
        try:
            request = op.send(send) if error is None else op.throw(error)
        except StopIteration as stop:
            if runtime.deferred is not None:
                raise runtime.deferred from None
            result: R = stop.value
            return result
        except BaseException as exc:
            if runtime.deferred is not None and exc is not runtime.deferred:
                raise runtime.deferred from exc
            raise
        send = error = None
        kind = type(request)
        if runtime.deferred is not None and kind is not Cleanup:
            error = runtime.deferred  # the cleanups are done: now the cancellation
            continue
        try:
            if kind is Call:
                call: Call = request  # type: ignore[assignment]
                send = getattr(backend, call.method)(*call.args)
            elif kind is Cleanup:
                call = request  # type: ignore[assignment]
                send = runtime.cleanup(runtime, getattr(backend, call.method)(*call.args))
            elif kind is Next:
                send = runtime.next(request.iterator)  # type: ignore[union-attr]
            elif kind is Iterate:  # an iterator (async or not): nothing to await
                send = getattr(backend, request.method)(*request.args)  # type: ignore[union-attr]
                continue
            elif kind is Sleep:
                send = runtime.sleep(request.seconds)  # type: ignore[union-attr]
            elif kind is Await:
                send = runtime.wait(request)  # type: ignore[arg-type]
            else:
                send = runtime.flight(runtime, request)  # type: ignore[arg-type]
            if suspends:
                send = await send
        except BaseException as exc:  # thrown into the operation, which decides
            error = exc


def _as_is(runtime: _Runtime, value: Any) -> Any:
    return value


async def _to_the_end(runtime: _Runtime, call: Awaitable[Any]) -> Any:
    """Await ``call`` to its end; a cancellation meanwhile is held back in ``runtime``."""
    task = asyncio.ensure_future(call)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # the call itself was cancelled (its backend closed)
                raise
            runtime.deferred = asyncio.CancelledError()


def _next(iterator: Iterator[Any]) -> Any:
    return next(iterator, None)


async def _anext(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


def _refuse_await(request: Await) -> None:
    close = getattr(request.awaitable, "close", None)
    if close is not None:
        close()  # never awaited: no "coroutine was never awaited" warning
    raise ConfigurationError(request.on_sync)


def drive(op: Op[R], backend: Any, flights: SingleFlight[Any]) -> R:
    """Run ``op`` to its end on a sync backend; its result (or its exception).

    Runs :func:`_loop` without an event loop: on a sync runtime nothing in it
    awaits, so the coroutine finishes on its first step.
    """

    def flight(runtime: _Runtime, request: Flight[Any]) -> Any:
        return flights.run(
            request.key,
            lambda: _finish(_loop(request.leader(), runtime)),
            request.timeout,
            lambda: _finish(_loop(request.fallback(), runtime)),
        )

    return _finish(_loop(op, _Runtime(backend, _next, time.sleep, _refuse_await, flight, False)))


def _finish(coroutine: Coroutine[Any, Any, R]) -> R:
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: R = stop.value
        return result
    coroutine.close()  # pragma: no cover - a sync runtime never suspends
    raise RuntimeError("a sync repository operation tried to suspend")  # pragma: no cover


def adrive(op: Op[R], backend: Any, flights: AsyncSingleFlight[Any]) -> Coroutine[Any, Any, R]:
    """Run ``op`` to its end on an async backend: a coroutine of its result."""

    def flight(runtime: _Runtime, request: Flight[Any]) -> Any:
        return flights.run(
            request.key,
            lambda: _loop(request.leader(), runtime),
            request.timeout,
            lambda: _loop(request.fallback(), runtime),
        )

    def wait(request: Await) -> Awaitable[Any]:
        return request.awaitable

    return _loop(op, _Runtime(backend, _anext, asyncio.sleep, wait, flight, True))
