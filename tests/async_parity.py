"""Run the sync repository suites through ``AsyncRepository``: the shim and the collector.

:class:`BlockingAsyncRepository` is an :class:`~cacheorm.AsyncRepository`
whose coroutine methods are blocking calls through a
:class:`~cacheorm.testing.Portal`, built like the sync ``Repository``
(``Repo(Model, backend=<sync backend>, **options)``). Its async backend shares
the storage of the sync backend passed in (:func:`async_twin`), and
``repo.backend`` is that sync backend, so a test that looks at the store
directly sees what the async repository wrote. Being an ``AsyncRepository``
itself, it is the ``event.repository`` of its own signals and hooks.

The sync suites' loaders, update functions and signal receivers are blocking
code (they wait for other threads, or call the repository again), so the shim
hands them to AsyncRepository as async functions that run them in a worker
thread: the loop stays free, and AsyncRepository's async-callable paths get
the suites' checks. (Its sync-callable paths are tests/test_async_repository.py's.)

Async twins: memory and filesystem backends are wrapped
(``AsyncMemoryBackend.wrap`` / ``AsyncFileSystemBackend.wrap``: the same
object, clock and options); a plain ``RedisBackend`` / ``MemcachedBackend``
becomes ``AsyncRedisBackend`` / ``AsyncMemcachedBackend`` on the same
server(s) with the same timeouts; anything else (a test's fault-injecting
subclass or wrapper) is awaited through :class:`ThreadedAdapter`, so its faults
reach the async repository unchanged.

:func:`parity_class` turns a sync test module into a test class whose tests
are that module's test functions (the same function objects), run with
``cacheorm.Repository`` replaced by the shim for the duration of each test.
"""

# pyright: reportPrivateUsage=false, reportUnknownMemberType=false, reportUnknownVariableType=false
# pyright: reportUnknownArgumentType=false
# (the shim reuses AsyncRepository's generation refresh and pytest's fixture objects, and reads the
# untyped attributes of redis / pymemcache clients and pytest nodes.)

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import importlib
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from typing import Any, ClassVar

import pytest

import cacheorm as co
from cacheorm._async_repository import _after_refresh
from cacheorm._signals import _LOCK, SIGNAL_NAMES, Signal
from cacheorm.testing import Portal

#: If set, a file each parity test appends "nodeid<TAB>repositories built" to.
PARITY_LOG_ENV = "CACHEORM_PARITY_LOG"

#: Seconds one blocking call may take before the portal cancels it (a hang fails, not blocks).
CALL_TIMEOUT = 120.0


class _State:
    """The portal the shim calls through, and the async backends made during one test."""

    portal: ClassVar[Portal | None] = None
    #: id(sync backend) -> (sync backend, its async twin, whether the twin must be closed).
    twins: ClassVar[dict[int, tuple[object, Any, bool]]] = {}
    #: Sync callables (loaders, update functions) run here, so they may block, and may
    #: call the repository again, without stopping the portal's loop.
    workers = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="parity-callable")
    #: Shims built during the current test (0: the test never touched a repository).
    built: ClassVar[int] = 0


def call(awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable`` on the parity portal's loop and wait for its result."""
    portal = _State.portal
    if portal is None:
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        raise RuntimeError("no parity portal: the parity class's fixture starts one")
    return portal.call(awaitable, CALL_TIMEOUT)


async def in_worker(fn: Callable[[], Any]) -> Any:
    """``fn()`` run in a worker thread (with this context), awaited."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_State.workers, context.run, fn)


# -- the async backend that shares a sync backend's store ---------------------------------


class ThreadedAdapter:
    """Any sync backend, awaited: each call runs the sync method in a worker thread.

    For the sync backends a test subclasses or wraps to inject faults (a lossy
    Redis, a vanishing store, a counting wrapper, ...): the async repository
    then meets exactly the faults the sync one meets. It has the async form of
    exactly the methods the sync backend has, so optional capabilities (TTL,
    counter, scan) are present or absent as on the sync side.
    """

    _sync: Any

    @classmethod
    def wrap(cls, backend: Any) -> Any:
        """An adapter of ``backend``, of a class with its methods."""
        names = [n for n in _ADAPTED if callable(getattr(backend, n, None))]
        namespace: dict[str, Any] = {name: _threaded(name) for name in names}
        if callable(getattr(backend, "scan", None)):
            namespace["scan"] = _threaded_scan
        # Named as the class it stands in for, so errors and hook events name it as the
        # sync side does.
        wrapped = type(backend)
        namespace.update(__module__=wrapped.__module__, __qualname__=wrapped.__qualname__)
        adapter_class = type(wrapped.__name__, (cls,), namespace)
        adapter = adapter_class()
        adapter._sync = backend
        return adapter

    async def aclose(self) -> None:
        """Nothing to release: the sync backend belongs to the test."""


#: The methods of the sync Backend protocol and its capabilities, but ``scan``.
_ADAPTED = (
    "get", "get_many", "set", "set_many", "add", "add_many", "replace", "replace_many",
    "delete", "delete_many", "exists", "incr", "gets", "cas",
    "touch", "touch_many", "ttl_of", "counter_add",
)  # fmt: skip


def _threaded(name: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: ThreadedAdapter, /, *args: Any) -> Any:
        return await in_worker(functools.partial(getattr(self._sync, name), *args))

    method.__name__ = method.__qualname__ = name
    return method


async def _threaded_scan(self: ThreadedAdapter, /, *args: Any) -> AsyncIterator[list[str]]:
    batches = await in_worker(functools.partial(self._sync.scan, *args))
    while (batch := await in_worker(functools.partial(next, batches, None))) is not None:
        yield batch


def redis_url(kwargs: Mapping[str, Any]) -> str:
    """The ``redis://`` URL of a redis-py client's connection keywords."""
    auth = ""
    if kwargs.get("password"):
        auth = f"{kwargs.get('username') or ''}:{kwargs['password']}@"
    return f"redis://{auth}{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def _redis_twin(backend: co.RedisBackend) -> Callable[[], Any]:
    """How to build the async Redis backend on the server(s) of ``backend``."""
    cls = co.AsyncRedisBackend
    client: Any = backend.client
    if hasattr(client, "get_primaries"):  # redis.cluster.RedisCluster
        nodes = [f"{node.host}:{node.port}" for node in client.get_primaries()]
        return lambda: cls.from_cluster(nodes)
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    url = redis_url(kwargs)
    options: dict[str, Any] = {
        ours: kwargs[theirs]
        for ours, theirs in (
            ("timeout", "socket_timeout"),
            ("connect_timeout", "socket_connect_timeout"),
        )
        if kwargs.get(theirs) is not None
    }
    return lambda: cls.from_url(url, **options)


def _memcached_twin(backend: co.MemcachedBackend) -> Callable[[], Any]:
    """How to build the async memcached backend on the server(s) of ``backend``."""
    cls = co.AsyncMemcachedBackend
    servers = backend.servers
    node = backend._nodes[0]
    options: dict[str, Any] = {
        "max_value_size": backend.max_value_size,
        "key_prefix": node.client.key_prefix,
        "retry_timeout": node.retry_timeout,
    }
    for name in ("timeout", "connect_timeout"):  # the sync client's socket timeouts
        if getattr(node.client, name, None) is not None:
            options[name] = getattr(node.client, name)
    return lambda: cls.from_servers(servers, **options)


def _make_twin(backend: object) -> tuple[Any, bool]:
    """A new async backend sharing ``backend``'s store, and whether it must be closed."""
    if isinstance(backend, type) or not isinstance(backend, co.Backend):
        return backend, False  # not a backend: AsyncRepository gives its own error
    # Exactly these classes: a test's subclass may block or call a repository in an
    # overridden method, so it runs in worker threads (below), off the loop.
    if type(backend) is co.MemoryBackend:
        return co.AsyncMemoryBackend.wrap(backend), False
    if type(backend) is co.FileSystemBackend:
        return co.AsyncFileSystemBackend.wrap(backend), True
    build: Callable[[], Any] | None = None
    if type(backend) is co.RedisBackend:
        build = _redis_twin(backend)
    elif type(backend) is co.MemcachedBackend:
        build = _memcached_twin(backend)
    if build is None:  # a test's own backend class: keep its behaviour, call it in threads
        return ThreadedAdapter.wrap(backend), True
    made = build

    async def on_loop() -> Any:
        return made()

    return call(on_loop()), True


def async_twin(backend: object) -> Any:
    """The async backend (one per sync backend and test) that shares ``backend``'s store."""
    hit = _State.twins.get(id(backend))
    if hit is not None and hit[0] is backend:
        return hit[1]
    twin, owned = _make_twin(backend)
    _State.twins[id(backend)] = (backend, twin, owned)
    return twin


def close_twins() -> None:
    """Close the async backends made during this test (their sync backends stay as they are)."""
    twins, _State.twins = _State.twins, {}
    for _, twin, owned in twins.values():
        if owned:
            call(twin.aclose())


# -- the shim --------------------------------------------------------------------------


def _off_loop(fn: Any) -> Any:
    """``fn`` as an async function running in a worker thread, if it is a sync callable.

    A sync test's loader or update function is blocking code: it may wait for
    another thread, or call the repository itself (which waits on the loop),
    so it must not run on the loop. An async one, or a non-callable (a test
    of the error), is passed on unchanged.
    """
    if not callable(fn) or inspect.iscoroutinefunction(fn):
        return fn

    @functools.wraps(fn)
    async def in_thread(*args: Any) -> Any:
        return await in_worker(functools.partial(fn, *args))

    return in_thread


#: The callable argument (position, name) of AsyncRepository's methods that take one;
#: the shim runs it off the loop (see :func:`_off_loop`).
CALLABLE_ARGUMENTS: dict[str, tuple[int, str]] = {
    "update_with": (1, "fn"),
    "get_or_load": (1, "loader"),
    "get_or_load_many": (1, "loader"),
}

#: Every public coroutine method of AsyncRepository, and its callable argument if any.
ASYNC_METHODS: dict[str, tuple[int, str] | None] = {
    name: CALLABLE_ARGUMENTS.get(name)
    for name, _ in inspect.getmembers(co.AsyncRepository, inspect.iscoroutinefunction)
    if not name.startswith("_")
}


async def _settled(tasks: set[asyncio.Task[Any]]) -> None:
    """Wait for ``tasks`` (their errors are theirs: AsyncRepository logs them)."""
    await asyncio.gather(*list(tasks), return_exceptions=True)


def _blocking(name: str, callable_at: tuple[int, str] | None) -> Callable[..., Any]:
    """The shim's blocking method for ``AsyncRepository.<name>``."""
    coroutine_function = getattr(co.AsyncRepository, name)

    def method(self: BlockingAsyncRepository, /, *args: Any, **kwargs: Any) -> Any:
        if callable_at is not None:
            index, keyword = callable_at
            if len(args) > index:
                args = (*args[:index], _off_loop(args[index]), *args[index + 1 :])
            elif keyword in kwargs:
                kwargs[keyword] = _off_loop(kwargs[keyword])
        fresh = self._fresh.get(name)
        if fresh is not None:
            result = call(fresh(*args, **kwargs))
        else:
            result = call(coroutine_function(self, *args, **kwargs))
        if self._rewrites:  # rewrite_on_read: return after the rewrite, as Repository does
            call(_settled(self._rewrites))
        return result

    method.__name__ = method.__qualname__ = name
    method.__signature__ = inspect.signature(coroutine_function)  # type: ignore[attr-defined]
    method.__doc__ = f"``AsyncRepository.{name}``, as a blocking call through the portal."
    return method


class OffLoopReceiver:
    """A sync signal receiver, awaited by the repository and run in a worker thread.

    A sync test's receiver may call the repository (a write racing the one
    being signalled), which waits on the loop: so it must not run on it.
    It compares equal to the function it runs, so ``disconnect(fn)`` and
    ``signal.receivers == (fn,)`` behave as for the function itself.
    """

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, event: Any) -> Awaitable[Any]:
        return self._run(event)

    async def _run(self, event: Any) -> Any:
        bound = functools.partial(self.fn, event)
        context = contextvars.copy_context()
        result = await asyncio.get_running_loop().run_in_executor(
            _State.workers, context.run, bound
        )
        if inspect.iscoroutine(result):
            result = await result
        return result

    def __eq__(self, other: object) -> bool:
        if isinstance(other, OffLoopReceiver):
            other = other.fn
        return bool(self.fn == other)

    def __hash__(self) -> int:
        return hash(self.fn)


class _OffLoopSignal(Signal[Any]):
    """A repository signal whose sync receivers run as :class:`OffLoopReceiver`."""

    def connect(self, receiver: Any) -> Any:
        if callable(receiver) and not inspect.iscoroutinefunction(receiver):
            super().connect(OffLoopReceiver(receiver))
            return receiver
        return super().connect(receiver)


class _OffLoopTarget:
    """Another shim, as the ``target`` AsyncRepository.load_related awaits ``get_many`` of.

    Its blocking ``get_many`` (with the target's hooks) runs in a worker thread.
    """

    def __init__(self, target: BlockingAsyncRepository) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    async def get_many(self, pks: Any) -> Any:
        return await in_worker(functools.partial(self._target.get_many, pks))


class BlockingAsyncRepository(co.AsyncRepository[Any]):
    """An AsyncRepository that looks like the sync ``Repository``: see the module docstring.

    Args:
        model: the dataclass.
        backend: a SYNC backend; the repository runs on an async backend that
            shares its store (:func:`async_twin`). None: a private
            ``AsyncMemoryBackend`` (its sync store is ``backend``).
        **options: the ``Repository`` keywords.
    """

    def __init__(self, model: Any, *, backend: Any = None, **options: Any) -> None:
        _State.built += 1
        self._sync_backend = backend
        #: generations=True: the generation-reading coroutine of each method, by name.
        self._fresh: dict[str, Callable[..., Awaitable[Any]]] = {}
        store = None if backend is None else async_twin(backend)
        super().__init__(model, backend=store, **options)
        signals = self.signals
        for name in SIGNAL_NAMES:
            setattr(signals, name, _OffLoopSignal(name, signals))
        with _LOCK:
            signals._refresh()

    @property
    def backend(self) -> Any:
        """The sync backend whose store the repository's async backend shares."""
        if self._sync_backend is None:
            return self._backend.sync_backend  # type: ignore[attr-defined]
        return self._sync_backend

    def _read_generation_first(self, generation: Any) -> None:
        """generations=True: each blocking call awaits AsyncRepository's generation-reading form.

        AsyncRepository wraps its coroutine methods per instance; the shim's methods
        are blocking ones, so it keeps the wrapped coroutines for them to run instead.
        """
        for name in ASYNC_METHODS:
            if name != "aclose":
                method = functools.partial(getattr(co.AsyncRepository, name), self)
                self._fresh[name] = _after_refresh(self, generation, method)

    def load_related(self, records: Any, field: Any, target: Any, **options: Any) -> Any:
        """``AsyncRepository.load_related``, blocking; a shim ``target`` is read off the loop."""
        if isinstance(target, BlockingAsyncRepository):
            target = _OffLoopTarget(target)
        method = self._fresh.get("load_related") or functools.partial(
            co.AsyncRepository.load_related, self
        )
        return call(method(records, field, target, **options))

    def scan(self, **options: Any) -> Any:
        """``AsyncRepository.scan``, as a blocking iterator through the portal."""
        portal = _State.portal
        assert portal is not None, "no parity portal"
        return portal.iterate(co.AsyncRepository.scan(self, **options))

    def key_for(self, pk: Any) -> str:
        """The key of ``pk``; with generations, in the namespace's current generation.

        The sync Repository reads the generation when it builds a key; an
        AsyncRepository uses the one its last awaited operation read (and refuses
        before the first). The shim awaits a read first, as that error advises.
        """
        if self._generation is not None:
            call(self._fresh["exists"](pk))
        return super().key_for(pk)

    def key_of(self, obj: Any) -> str:
        """The key of ``obj``: see :meth:`key_for`."""
        return self.key_for(self.pk_of(obj))

    def close(self) -> None:
        """``aclose()``, blocking."""
        call(co.AsyncRepository.aclose(self))

    def __enter__(self) -> BlockingAsyncRepository:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<blocking {super().__repr__()}>"


for _name, _callable_at in ASYNC_METHODS.items():
    if _name not in vars(BlockingAsyncRepository):  # load_related has its own
        setattr(BlockingAsyncRepository, _name, _blocking(_name, _callable_at))


# -- the collector -----------------------------------------------------------------------


def _fixture_in_class(definition: Any) -> Any:
    """A module-level fixture made into one a test class can hold (not bound to ``self``)."""
    marker = definition._fixture_function_marker
    return marker(staticmethod(definition._get_wrapped_function()))


def parity_class(
    module_name: str, *, deselect: Mapping[str, str], xfail: Mapping[str, str]
) -> type:
    """A test class running ``module_name``'s tests with ``co.Repository`` as the shim.

    Args:
        module_name: the sync test module, e.g. ``"tests.test_repository"``.
        deselect: test (function or class) names never collected here, each with
            why (a feature AsyncRepository does not have, a sync-only check).
        xfail: test names, optionally with their parameter id (``"test_x[redis]"``),
            that fail through AsyncRepository: strict xfail, with the bug.

    Returns:
        The class: pytest collects it when a test module binds it to a ``Test*`` name.
    """
    module = importlib.import_module(module_name)
    short = module_name.rpartition(".")[2]
    unknown = set(deselect) - set(vars(module))
    if unknown:
        raise ValueError(f"deselected tests not in {module_name}: {sorted(unknown)}")
    namespace: dict[str, Any] = {"__doc__": f"{module_name}, through AsyncRepository."}
    fixture_type = type(_parity_fixture)
    for name, obj in vars(module).items():
        if name in deselect:
            continue
        if type(obj) is fixture_type:
            namespace[name] = _fixture_in_class(obj)
        elif name.startswith("test") and inspect.isfunction(obj):
            namespace[name] = staticmethod(obj)
        elif name.startswith("Test") and isinstance(obj, type) and obj.__module__ == module_name:
            namespace[name] = obj
    if hasattr(module, "pytestmark"):
        namespace["pytestmark"] = module.pytestmark
    xfails = dict(xfail)

    @pytest.fixture(autouse=True)
    def _through_async_repository(
        request: pytest.FixtureRequest, _parity_portal: Portal, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[None]:
        node: Any = request.node
        reason = xfails.get(str(node.name)) or xfails.get(str(node.originalname))
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
        monkeypatch.setattr(co, "Repository", BlockingAsyncRepository)
        _State.built = 0
        try:
            yield
        finally:
            monkeypatch.undo()
            close_twins()
            log = os.environ.get(PARITY_LOG_ENV)
            if log:  # which tests really ran a repository through AsyncRepository
                with open(log, "a", encoding="utf-8") as out:
                    out.write(f"{request.node.nodeid}\t{_State.built}\n")

    namespace["_parity_portal"] = _parity_fixture
    namespace["_through_async_repository"] = _fixture_in_class(_through_async_repository)
    return type(f"Test_{short}", (), namespace)


@contextlib.contextmanager
def parity_portal() -> Generator[Portal, None, None]:
    """A portal the shim calls through while the ``with`` block runs."""
    with Portal(name="cacheorm-parity") as portal:
        _State.portal = portal
        try:
            yield portal
        finally:
            _State.portal = None


@pytest.fixture(scope="class")
def _parity_fixture() -> Iterator[Portal]:
    """One portal per parity class (that is, per sync module)."""
    with parity_portal() as portal:
        yield portal


_parity_fixture = _fixture_in_class(_parity_fixture)
