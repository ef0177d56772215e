"""Logging and instrumentation: one logger per layer, and the operation hook.

Loggers (all silent by default: the ``cacheorm`` logger has a ``NullHandler``):

==========================  ====================================================
``cacheorm.repository``     CAS attempts running out, leases lost under a loader
                            (WARNING); CAS conflicts, lease waits (DEBUG)
``cacheorm.redis``          a server unreachable, a reconnect (WARNING); resent
                            reads (DEBUG)
``cacheorm.memcached``      a connection discarded, a dead pool server (WARNING);
                            resent reads (DEBUG)
``cacheorm.filesystem``     orphaned temporary files removed (WARNING)
==========================  ====================================================

No log line ever contains a value or a password; keys appear only at DEBUG.

Hooks: ``Repository(..., hooks=[fn])`` calls ``fn(event)`` with an
:class:`OperationEvent` after every public operation. A repository without
hooks runs the plain methods: no wrapper, no clock reads, nothing to pay.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from cacheorm._core import RepositoryCore

__all__ = ["Hook", "OperationEvent", "get_logger", "instrument", "system_of"]

logging.getLogger("cacheorm").addHandler(logging.NullHandler())


def get_logger(layer: str) -> logging.Logger:
    """The logger of one layer: ``cacheorm.<layer>``."""
    return logging.getLogger(f"cacheorm.{layer}")


#: Expected outcomes that are answers, not failures: a miss, a taken key.
_ANSWERS = ("NotFound", "AlreadyExists")


@dataclasses.dataclass(frozen=True, slots=True)
class OperationEvent:
    """What one repository operation did, handed to every hook after it ends.

    Attributes:
        operation: the method called: ``"get"``, ``"get_many"``, ``"create"``, ...
        model: the repository's dataclass.
        namespace: the repository's namespace (its key prefix and collection name).
        system: the store: ``"redis"``, ``"memcached"``, ``"memory"``,
            ``"filesystem"``, or a third-party backend's class name.
        key_count: how many keys the call named (1 for single-key operations).
        hits: for reads (``get``, ``get_or_none``, ``get_many``, ``exists``), how
            many keys were found; None for other operations.
        misses: for reads, how many keys were not found; None otherwise.
        loads: for ``get_or_load`` / ``get_or_load_many``, how many records this
            call asked its loader for (0: all came from the cache); None otherwise.
        duration: seconds the call took (``time.perf_counter``).
        start_time_ns: wall-clock start (``time.time_ns``), for tracing.
        error: the exception the call raised, or None.
    """

    operation: str
    model: type[Any]
    namespace: str
    system: str
    key_count: int
    hits: int | None
    misses: int | None
    loads: int | None
    duration: float
    start_time_ns: int
    error: BaseException | None

    @property
    def outcome(self) -> Literal["ok", "miss", "error"]:
        """``"ok"``, ``"miss"`` (NotFound / AlreadyExists: answers, not failures) or ``"error"``."""
        if self.error is None:
            return "ok"
        return "miss" if type(self.error).__name__ in _ANSWERS else "error"

    @property
    def error_type(self) -> str | None:
        """The exception's class name (``"BackendUnavailable"``), or None."""
        return None if self.error is None else type(self.error).__name__


#: A hook: called with each finished operation's event, in the caller's thread.
Hook = Callable[[OperationEvent], None]

_SYSTEMS = {
    "RedisBackend": "redis",
    "MemcachedBackend": "memcached",
    "MemoryBackend": "memory",
    "FileSystemBackend": "filesystem",
    "AsyncRedisBackend": "redis",
    "AsyncRedisClusterBackend": "redis",
    "AsyncMemcachedBackend": "memcached",
    "AsyncMemoryBackend": "memory",
    "AsyncFileSystemBackend": "filesystem",
}


def system_of(backend: object) -> str:
    """The ``system`` name of a backend (its class name if it is not one of ours)."""
    name = type(backend).__name__
    return _SYSTEMS.get(name, name)


# Operations of a repository nested inside another of the same repository
# (patch -> update_with, get_or_create -> create) report once, as the outer
# call; another repository's operations inside one (load_related's get_many
# of the target) report as their own.
_active: contextvars.ContextVar[object] = contextvars.ContextVar("cacheorm_active", default=None)


def _count_found(result: Any) -> int:
    return sum(item is not None for item in result)


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], int]:
    """Materialise the batch argument (an iterable of pks or records); its length."""
    if args:
        items = list(args[0])
        return (items, *args[1:]), len(items)
    for name in ("pks", "objs"):
        if name in kwargs:
            kwargs[name] = items = list(kwargs[name])
            return args, len(items)
    return args, 0  # a missing argument: the method raises TypeError itself


# operation -> (is a batch, how hits are read from the result, counts loads)
_Reads = Callable[[Any], int]
_OPERATIONS: dict[str, tuple[bool, _Reads | None]] = {
    "get": (False, lambda result: 1),
    "get_or_none": (False, lambda result: int(result is not None)),
    "get_many": (True, _count_found),
    "exists": (False, lambda result: int(bool(result))),
    "create": (False, None),
    "save": (False, None),
    "update": (False, None),
    "get_or_create": (False, None),
    "update_with": (False, None),
    "patch": (False, None),
    "get_or_load": (False, None),
    "get_or_load_many": (True, None),
    "delete": (False, None),
    "delete_many": (True, None),
    "create_many": (True, None),
    "save_many": (True, None),
    "update_many": (True, None),
    "touch": (False, None),
    "touch_many": (True, None),
    "ttl_of": (False, None),
    "clear": (False, None),
    "count": (False, None),
    "load_related": (True, None),
}
#: Operations whose second positional argument (or ``loader=``) is a loader.
_LOADERS = {"get_or_load": 1, "get_or_load_many": 1}


def instrument(repo: RepositoryCore[Any], hooks: Sequence[Hook]) -> None:
    """Replace ``repo``'s public operations by wrappers that report to ``hooks``.

    Only called when there are hooks, so an uninstrumented repository keeps
    its plain methods.
    """
    hooks = tuple(hooks)
    model: type[Any] = repo.model
    namespace = repo.namespace
    system = system_of(repo._backend)  # pyright: ignore[reportPrivateUsage]
    for name, (batch, reads) in _OPERATIONS.items():
        method = getattr(repo, name, None)
        if method is None:  # an operation AsyncRepository does not have
            continue
        setattr(
            repo,
            name,
            _wrap(repo, name, method, batch, reads, hooks, model, namespace, system),
        )


class _Operation:
    """One reported call of a repository operation: started on creation, ended by ``end``."""

    __slots__ = ("args", "count", "kwargs", "loads", "spec", "start", "start_ns", "token")

    def __init__(self, spec: _Spec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.spec = spec
        count = 1
        if spec.batch:
            args, count = _batch_size(args, kwargs)
        loads: list[int] | None = None
        loader_at = spec.loader_at
        if loader_at is not None:
            loads = [0]
            if len(args) > loader_at:
                args = (*args[:loader_at], _counting(args[loader_at], loads, spec.batch))
            elif "loader" in kwargs:
                kwargs["loader"] = _counting(kwargs["loader"], loads, spec.batch)
        self.args, self.kwargs, self.count, self.loads = args, kwargs, count, loads
        self.token = _active.set(spec.repo)
        self.start_ns = time.time_ns()
        self.start = time.perf_counter()

    def end(self, result: Any, error: BaseException | None) -> None:
        """Report the outcome to every hook."""
        duration = time.perf_counter() - self.start
        _active.reset(self.token)
        spec = self.spec
        hits: int | None = None
        misses: int | None = None
        if spec.reads is not None:
            if error is None:
                hits = spec.reads(result)
            elif spec.name == "get" and type(error).__name__ == "NotFound":
                hits = 0
            if hits is not None:
                misses = self.count - hits
        event = OperationEvent(
            spec.name,
            spec.model,
            spec.namespace,
            spec.system,
            self.count,
            hits,
            misses,
            None if self.loads is None else self.loads[0],
            duration,
            self.start_ns,
            error,
        )
        for hook in spec.hooks:
            _call_hook(hook, event)


class _Spec(NamedTuple):
    repo: object
    name: str
    batch: bool
    reads: _Reads | None
    loader_at: int | None
    hooks: tuple[Hook, ...]
    model: type[Any]
    namespace: str
    system: str


def _wrap(
    repo: object,
    name: str,
    method: Callable[..., Any],
    batch: bool,
    reads: _Reads | None,
    hooks: tuple[Hook, ...],
    model: type[Any],
    namespace: str,
    system: str,
) -> Callable[..., Any]:
    spec = _Spec(repo, name, batch, reads, _LOADERS.get(name), hooks, model, namespace, system)
    if inspect.iscoroutinefunction(method):  # AsyncRepository

        @functools.wraps(method)
        async def awaited(*args: Any, **kwargs: Any) -> Any:
            if _active.get() is repo:
                return await method(*args, **kwargs)
            call = _Operation(spec, args, kwargs)
            try:
                result = await method(*call.args, **call.kwargs)
            except BaseException as exc:
                call.end(None, exc)
                raise
            call.end(result, None)
            return result

        return awaited

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _active.get() is repo:
            return method(*args, **kwargs)
        call = _Operation(spec, args, kwargs)
        try:
            result = method(*call.args, **call.kwargs)
        except BaseException as exc:
            call.end(None, exc)
            raise
        call.end(result, None)
        return result

    return wrapper


def _counting(loader: Any, loads: list[int], batch: bool) -> Callable[..., Any]:
    """``loader``, counting how many records it is asked for."""

    def counted(*args: Any) -> Any:
        loads[0] += len(args[0]) if batch and args else 1
        return loader(*args)

    return counted


_hook_log = get_logger("hooks")


def _call_hook(hook: Hook, event: OperationEvent) -> None:
    """Run one hook; a failing hook is logged, never raised into the caller's operation."""
    try:
        hook(event)
    except Exception:
        _hook_log.exception("cacheorm hook %r failed on %s", hook, event.operation)
