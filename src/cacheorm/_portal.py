"""A portal: an asyncio event loop in a background thread that blocking code calls into.

The async contract suite uses it to run the sync suites, unchanged, against
async backends and repositories: :meth:`Portal.wrap` turns an async object
into a blocking proxy whose every awaited call runs on the portal's one loop,
from whichever thread calls it.
"""

# pyright: reportPrivateUsage=false

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from typing_extensions import Self

from cacheorm._backend import Closing

__all__ = ["Portal"]

_T = TypeVar("_T")


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


class Portal(Closing):
    """An asyncio event loop running in a daemon thread, for blocking callers.

    ``portal.call(coro)`` runs ``coro`` on that loop and blocks the calling
    thread until it is done; many threads may call at once, and their
    coroutines then run concurrently on the one loop. Objects built on the
    loop (connections, tasks) stay on it, so an async backend made through
    the portal can be used by every later call. Close it (or use
    ``with Portal() as portal:``) to cancel what is still running, finish
    async generators and the loop's default executor, and stop the thread.

    Args:
        loop_factory: makes the loop, e.g. ``uvloop.new_event_loop``;
            ``asyncio.new_event_loop`` by default.
        name: the thread's name.
    """

    def __init__(
        self,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        name: str = "cacheorm-portal",
    ) -> None:
        self._loop = (asyncio.new_event_loop if loop_factory is None else loop_factory)()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The portal's event loop (schedule on it only with its thread-safe methods)."""
        return self._loop

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def call(self, awaitable: Awaitable[_T], timeout: float | None = None) -> _T:
        """Run ``awaitable`` on the portal's loop and wait for its result.

        Args:
            awaitable: a coroutine (or other awaitable) to await on the loop.
            timeout: seconds to wait; then the call is cancelled and
                ``TimeoutError`` raised. None waits as long as it takes.

        Returns:
            What ``awaitable`` returned; its exception is raised here.

        Raises:
            RuntimeError: the portal is closed, or this is the portal's own
                thread (waiting there would block the loop forever).
            TimeoutError: ``timeout`` passed first.
        """
        problem = None
        if self._closed:
            problem = "the portal is closed"
        elif threading.get_ident() == self._thread.ident:
            problem = "Portal.call() from the portal's own loop would wait forever; await instead"
        if problem is not None:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never awaited, by design: no warning
            raise RuntimeError(problem)
        future = asyncio.run_coroutine_threadsafe(_await(awaitable), self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()  # a timeout or KeyboardInterrupt: stop the coroutine too
            raise

    def iterate(self, iterator: AsyncIterator[_T]) -> Iterator[_T]:
        """A blocking iterator over ``iterator``: each item is one :meth:`call`.

        Leaving the loop early closes the async iterator (``aclose``) on the loop.
        """
        finished = False
        try:
            while True:
                try:
                    item = self.call(iterator.__anext__())
                except BaseException:
                    finished = True  # exhausted, or raised: an async generator is done either way
                    raise
                yield item
        except StopAsyncIteration:
            return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if not finished and aclose is not None and not self._closed:
                self.call(aclose())  # the caller left early

    def wrap(self, target: object) -> Any:
        """A blocking proxy of ``target``, whose calls run on the portal's loop.

        Each public method of ``target`` (its class's callables whose names do
        not start with ``_``) becomes a blocking method of the same name: the
        call runs on the loop, a returned awaitable is awaited there, and a
        returned async iterator becomes a blocking iterator (:meth:`iterate`).
        Any other attribute is read from ``target`` as it is. The proxy's
        class has the methods as real attributes, so runtime-checkable
        protocols (``isinstance(proxy, cacheorm.Backend)``) see exactly the
        methods ``target`` has. An object with ``aclose()`` and no ``close()``
        also gets ``close()``, and the proxy is a context manager whose exit
        calls ``close()`` (what :class:`~cacheorm.Backend` and
        :class:`~cacheorm.Repository` users expect of ``with``).

        Args:
            target: the async object; it should have been made on this
                portal's loop (or be free of any loop).

        Returns:
            The proxy; ``proxy.portal_target`` is ``target``.
        """
        cls = type(target)
        names = [
            name
            for name in dir(cls)
            if not name.startswith("_") and callable(inspect.getattr_static(cls, name))
        ]
        namespace: dict[str, Any] = {name: _blocking(name) for name in names}
        if "aclose" in names and "close" not in names:
            namespace["close"] = _blocking("aclose")
        namespace["__doc__"] = f"Blocking proxy of {cls.__qualname__} (see Portal.wrap)."
        proxy_class = type(f"Blocking{cls.__name__}", (_Proxy,), namespace)
        proxy: _Proxy = proxy_class()
        object.__setattr__(proxy, "portal_target", target)
        object.__setattr__(proxy, "_portal", self)
        return proxy

    def close(self) -> None:
        """Cancel what still runs on the loop, finish it and stop the thread; idempotent."""
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("Portal.close() from the portal's own loop: close it from outside")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def __repr__(self) -> str:
        """The class, its loop and whether it is closed."""
        state = "closed" if self._closed else "running"
        return f"Portal({type(self._loop).__name__}, {state})"


class _Proxy:
    """Base of the classes :meth:`Portal.wrap` makes."""

    portal_target: Any
    _portal: Portal

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("portal_target", "_portal"):
            raise AttributeError(name)
        return getattr(self.portal_target, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<blocking {self.portal_target!r}>"


def _blocking(name: str) -> Callable[..., Any]:
    """The proxy method for ``target.<name>``."""

    def method(self: _Proxy, /, *args: Any, **kwargs: Any) -> Any:
        target = self.portal_target

        async def invoke() -> Any:
            result = getattr(target, name)(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        result = self._portal.call(invoke())
        if hasattr(result, "__anext__"):  # an async iterator; isinstance would lose its type
            return self._portal.iterate(result)
        return result

    method.__name__ = method.__qualname__ = name
    return method
