"""``AsyncRepository[T]``: :class:`~cacheorm.Repository` for asyncio, on the same core.

Every operation's logic lives in :class:`~cacheorm._core.RepositoryCore`,
shared with the sync ``Repository``: single-call operations await the backend
directly, multi-step ones run the core's generators with
:func:`cacheorm._ops.adrive`. So validation, keys, encoding, errors, the TTL
rules, signals, hooks, compare-and-set and the lease protocol are the sync
ones, not a copy of them.
"""

# pyright: reportPrivateUsage=false
# (the repository drives the core's operations through their private API.)

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

from typing_extensions import Unpack

from cacheorm import _keyspace
from cacheorm._backend import AsyncBackend, AsyncClosing
from cacheorm._core import (
    LOCK_TIMEOUT,
    UPDATE_ATTEMPTS,
    RepositoryCore,
    RepositoryOptions,
)
from cacheorm._errors import ConfigurationError
from cacheorm._flight import AsyncSingleFlight
from cacheorm._generation import Generation
from cacheorm._ops import Op, adrive
from cacheorm._ttl import DEFAULT, KEEP_TTL, TTLArg, UpdateTTLArg
from cacheorm._versions import MigrationReport

__all__ = ["AsyncRepository"]

T = TypeVar("T")
R = TypeVar("R")
#: The referenced model of :meth:`AsyncRepository.load_related`.
U = TypeVar("U")


class AsyncRepository(RepositoryCore[T], AsyncClosing):
    """Stores records of one dataclass model in an async backend; every operation is awaited.

    The same class as :class:`~cacheorm.Repository`, for asyncio code: the
    same constructor keywords (``serializer``, ``key``, ``namespace``,
    ``prefix``, ``ttl``, ``hooks``, ``version``, ...), the same operations
    with the same semantics, validation, errors, TTL rules and signals, each
    a coroutine::

        users = co.AsyncRepository(User, backend=co.AsyncRedisBackend.from_url(url))
        await users.create(User(id=1, name="Sam"))
        user = await users.get(1)

    Both classes run one shared core (see docs/design.md), so what the
    ``Repository`` docs say of an operation holds here.

    Async extras: ``update_with`` and ``patch`` accept an async update
    function, ``get_or_load`` and ``get_or_load_many`` an async loader, and
    signal receivers may be coroutine functions (each is awaited in turn).
    Cancelling an operation (``task.cancel()``, ``asyncio.timeout``) is an
    interrupted request: a write may or may not have happened, the backend
    stays usable, and a ``get_or_load`` lease it held is released.

    Args:
        model: the dataclass.
        backend: an :class:`~cacheorm.AsyncBackend`; a new private
            :class:`~cacheorm.AsyncMemoryBackend` if omitted (closed by
            :meth:`aclose`; a backend passed in belongs to the caller).
        **options: the keywords of :class:`~cacheorm.Repository`. With
            ``generations=True`` each operation reads the namespace's
            generation when its cached copy is stale, so ``key_for`` and
            ``key_of`` need one awaited operation first; with
            ``rewrite_on_read=True`` a stale record is rewritten by a task of
            its own while the read returns (:meth:`aclose` waits for them).

    Raises:
        ModelDefinitionError: the model cannot be stored.
        ConfigurationError: a sync backend (or anything else that is not an
            async backend), or a bad serializer, key template or TTL.
    """

    _backend: AsyncBackend
    _awaits = True

    def __init__(
        self,
        model: type[T],
        *,
        backend: AsyncBackend | None = None,
        **options: Unpack[RepositoryOptions],
    ) -> None:
        self._flights: AsyncSingleFlight[Any] = AsyncSingleFlight()
        #: rewrite_on_read rewrites under way (tasks), awaited by aclose().
        self._rewrites: set[asyncio.Task[Any]] = set()
        super().__init__(model, backend, **options)
        if self._generation is not None:
            self._read_generation_first(self._generation)

    def _default_backend(self) -> AsyncBackend:
        from cacheorm._aio_local import AsyncMemoryBackend

        return AsyncMemoryBackend()

    def _refuse_backend(self, model: type, backend: object) -> ConfigurationError | None:
        return None if _is_async_backend(backend) else _not_an_async_backend(model, backend)

    def _read_generation_first(self, generation: Generation) -> None:
        """generations=True: each operation reads a stale generation before building keys."""
        for name, _ in inspect.getmembers(type(self), inspect.iscoroutinefunction):
            if not name.startswith("_") and name != "aclose":
                setattr(self, name, _after_refresh(self, generation, getattr(self, name)))

    def _rewrite_stale(self, op: Op[Any]) -> None:
        """``rewrite_on_read``: rewrite the record in a task of its own; the read returns now."""
        task = asyncio.get_running_loop().create_task(self._run(op))
        self._rewrites.add(task)
        task.add_done_callback(self._rewrites.discard)

    def _run(self, op: Op[R]) -> Coroutine[Any, Any, R]:
        """Run one of the core's operations on this repository's backend."""
        return adrive(op, self._backend, self._flights)

    @property
    def backend(self) -> AsyncBackend:
        """The async backend records are stored in."""
        return self._backend

    async def aclose(self) -> None:
        """Close the backend if this repository created it (no ``backend=``); else nothing.

        With ``rewrite_on_read=True``, the rewrites still under way finish first.
        """
        if self._rewrites:
            await asyncio.gather(*self._rewrites, return_exceptions=True)
        if self._owns_backend:
            await self._backend.aclose()

    # -- reads ------------------------------------------------------------------

    async def get(self, pk: Any) -> T:
        """The record with primary key ``pk``, as :meth:`Repository.get <cacheorm.Repository.get>`.

        Raises:
            NotFound: no record under that key.
            DeserializationError: the stored bytes do not decode into the model,
                or decode into a record with another primary key.
        """
        key = self._key_for(pk)
        payload = await self._backend.get(key)
        if payload is None:
            raise self._not_found(pk, key)
        return self._load(key, payload, pk)

    async def get_or_none(self, pk: Any) -> T | None:
        """The record with primary key ``pk``, or None."""
        key = self._key_for(pk)
        payload = await self._backend.get(key)
        return None if payload is None else self._load(key, payload, pk)

    async def get_many(self, pks: Iterable[Any]) -> list[T | None]:
        """The records for ``pks`` in the same order, None where missing; one backend call."""
        if not isinstance(pks, list):
            pks = list(pks)
        keys = [self._key_for(pk) for pk in pks]
        return self._loaded(pks, keys, await self._backend.get_many(keys)) if keys else []

    async def exists(self, pk: Any) -> bool:
        """True if a record is stored under ``pk``."""
        return await self._backend.exists(self._key_for(pk))

    # -- writes -----------------------------------------------------------------

    async def create(self, obj: T, *, ttl: TTLArg = DEFAULT) -> T:
        """Insert ``obj`` if its key is free, atomically, and return it (auto ids too).

        Raises:
            AlreadyExists: a record is stored under the key; nothing was written.
            ValidationError: ``obj`` does not match the model; nothing was written.
        """
        if self._signalled or self._auto is not None:
            return await self._run(self._op_create(obj, ttl))
        key, payload = self._dump(obj)
        if not await self._backend.add(key, payload, self._resolve_ttl(ttl)):
            raise self._taken(key)
        return obj

    async def save(self, obj: T, *, ttl: TTLArg = DEFAULT) -> T:
        """Store ``obj`` whether or not it exists (upsert) and return it."""
        if self._signalled:
            return await self._run(self._op_save(obj, ttl))
        key, payload = self._dump(obj)
        await self._backend.set(key, payload, self._resolve_ttl(ttl))
        return obj

    async def update(self, obj: T, *, ttl: UpdateTTLArg = KEEP_TTL) -> T:
        """Replace the stored record with ``obj``, atomically, only if it exists.

        By default (:data:`~cacheorm.KEEP_TTL`) the record keeps its remaining TTL.

        Raises:
            NotFound: nothing is stored under the key; nothing was written.
        """
        if self._signalled:
            return await self._run(self._op_update(obj, ttl))
        key, payload = self._dump(obj)
        if not await self._backend.replace(key, payload, self._resolve_update_ttl(ttl)):
            raise self._not_to_update(key)
        return obj

    async def get_or_create(self, obj: T, *, ttl: TTLArg = DEFAULT) -> tuple[T, bool]:
        """``(record, created)``: the stored record with ``obj``'s key, or ``obj`` inserted now."""
        return await self._run(self._op_get_or_create(obj, ttl))

    async def update_with(
        self,
        pk: Any,
        fn: Callable[[T], T] | Callable[[T], Awaitable[T]],
        *,
        ttl: UpdateTTLArg = KEEP_TTL,
        attempts: int = UPDATE_ATTEMPTS,
    ) -> T:
        """Replace the record with ``fn(record)`` by compare-and-set; the new record.

        ``fn`` may be a plain or an async function; on a conflict it is called
        again with the record read again, so it must be a pure function of the
        record. See :meth:`Repository.update_with <cacheorm.Repository.update_with>`.

        Raises:
            NotFound: no record under ``pk``.
            ConflictError: ``attempts`` compare-and-sets all lost; nothing was written.
            ValidationError: ``fn`` returned a non-record or changed the key.
            OutcomeUnknown: the reply to a compare-and-set was lost.
        """
        return await self._run(self._op_update_with(pk, fn, ttl, attempts, "update_with"))

    async def patch(
        self,
        pk: Any,
        changes: Mapping[str, Any] | None = None,
        /,
        *,
        ttl: UpdateTTLArg = KEEP_TTL,
        **fields: Any,
    ) -> T:
        """Set some fields of the stored record, atomically (compare-and-set); the new record.

        Raises:
            ValidationError: an unknown or primary-key field, or a bad value.
            NotFound, ConflictError, OutcomeUnknown: as for :meth:`update_with`.
        """
        fn = self._patcher(changes, fields)
        return await self._run(self._op_update_with(pk, fn, ttl, UPDATE_ATTEMPTS, "patch"))

    # -- read-through -------------------------------------------------------------------

    async def get_or_load(
        self,
        pk: Any,
        loader: Callable[[], T] | Callable[[], Awaitable[T]],
        *,
        ttl: TTLArg = DEFAULT,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> T:
        """The cached record, or the one ``loader()`` returns, cached now (read-through).

        ``loader`` may be a plain or an async function. Tasks of this process
        that miss the same key wait for one load; other processes wait on a
        lease in the backend; nobody waits longer than ``lock_timeout``. See
        :meth:`Repository.get_or_load <cacheorm.Repository.get_or_load>`.

        Raises:
            ValidationError: the loader returned something that is not the record.
            BackendError: the store failed.
        """
        return await self._run(self._op_get_or_load(pk, loader, ttl, lock_timeout))

    async def get_or_load_many(
        self,
        pks: Iterable[Any],
        loader: Callable[[list[Any]], Iterable[T]] | Callable[[list[Any]], Awaitable[Iterable[T]]],
        *,
        ttl: TTLArg = DEFAULT,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> list[T | None]:
        """:meth:`get_or_load` for many keys; ``loader`` (plain or async) gets the missing pks.

        Raises:
            ValidationError: the loader returned something other than records
                of the keys asked for.
        """
        return await self._run(self._op_get_or_load_many(pks, loader, ttl, lock_timeout))

    async def delete(self, pk: Any) -> bool:
        """Remove the record with primary key ``pk``; True if it existed."""
        if self._signalled:
            return await self._run(self._op_delete(pk))
        return await self._backend.delete(self._key_for(pk))

    async def delete_many(self, pks: Iterable[Any]) -> int:
        """Remove the records for ``pks`` in one backend call; how many existed."""
        pks = list(pks)
        keys = [self._key_for(pk) for pk in pks]
        if not keys:
            return 0
        if self._signalled:
            return await self._run(self._op_delete_many(pks, keys))
        return await self._backend.delete_many(keys)

    # -- batch writes -------------------------------------------------------------

    async def create_many(self, objs: Iterable[T], *, ttl: TTLArg = DEFAULT) -> list[T]:
        """Insert every record whose key is free, in one backend call.

        Raises:
            AlreadyExists: some keys were taken (``.keys``); the others were written.
        """
        return await self._run(self._op_create_many(objs, ttl))

    async def save_many(self, objs: Iterable[T], *, ttl: TTLArg = DEFAULT) -> list[T]:
        """Store every record (upsert) in one backend call."""
        seconds = self._resolve_ttl(ttl)
        objs = list(objs)
        items = [self._dump(obj) for obj in objs]
        if items:
            if self._signalled:
                return await self._run(self._op_save_many(objs, items, seconds))
            await self._backend.set_many(items, seconds)
        return objs

    async def update_many(self, objs: Iterable[T], *, ttl: UpdateTTLArg = KEEP_TTL) -> list[T]:
        """Replace every stored record in one backend call; absent ones are not written.

        Raises:
            NotFound: some records were absent (``.keys``); the others were updated.
        """
        return await self._run(self._op_update_many(objs, ttl))

    # -- references, TTL and namespace operations, migrations (shared with Repository) --

    @typing.overload
    async def load_related(
        self,
        records: Iterable[T | None],
        field: str | Sequence[str],
        target: AsyncRepository[U],
        *,
        missing: typing.Literal["raise"] = "raise",
    ) -> dict[Any, U]: ...

    @typing.overload
    async def load_related(
        self,
        records: Iterable[T | None],
        field: str | Sequence[str],
        target: AsyncRepository[U],
        *,
        missing: typing.Literal["none"],
    ) -> dict[Any, U | None]: ...

    async def load_related(
        self,
        records: Iterable[T | None],
        field: str | Sequence[str],
        target: AsyncRepository[U],
        *,
        missing: typing.Literal["raise", "none"] = "raise",
    ) -> dict[Any, U] | dict[Any, U | None]:
        """The ``target`` records that ``field`` of ``records`` refers to, by primary key.

        One ``await target.get_many(...)`` for the whole batch; see
        :meth:`Repository.load_related <cacheorm.Repository.load_related>`.

        Raises:
            NotFound: ``missing="raise"`` and referenced records are not stored.
            ConfigurationError, ModelDefinitionError, ValidationError: a bad
                field, target or reference; nothing was read.
        """
        from cacheorm._refs import plan_related

        plan = plan_related(self, records, field, target, missing)
        return plan.finish(await target.get_many(plan.pks)) if plan.pks else {}

    async def touch(self, pk: Any, *, ttl: TTLArg = DEFAULT) -> bool:
        """Give the record under ``pk`` a new TTL (the repository's by default); True if found."""
        return await self._run(_keyspace.touch(self, pk, self._resolve_ttl(ttl)))

    async def touch_many(self, pks: Iterable[Any], *, ttl: TTLArg = DEFAULT) -> list[bool]:
        """:meth:`touch` for each primary key, in one backend call; which were found."""
        return await self._run(_keyspace.touch_many(self, list(pks), self._resolve_ttl(ttl)))

    async def ttl_of(self, pk: Any) -> float | None:
        """Seconds until the record under ``pk`` expires, or None if it never does.

        Raises:
            NotFound: no record under ``pk``.
            ConfigurationError: the backend lacks the TTL capability.
        """
        return await self._run(_keyspace.ttl_of(self, pk))

    async def clear(self, *, batch: int = 500) -> int:
        """Delete every record of this repository, ``batch`` keys at a time; how many.

        Raises:
            ConfigurationError: the backend cannot enumerate keys (memcached),
                or the key scheme is a key function.
        """
        return await self._run(_keyspace.clear(self, batch))

    async def count(self, *, batch: int = 500) -> int:
        """How many records this repository holds, by a key scan."""
        return await self._run(_keyspace.count(self, batch))

    def scan(
        self, *, batch: int = 500, errors: typing.Literal["raise", "skip"] = "raise"
    ) -> AsyncIterator[T]:
        """Every record of this repository, an async iterator with bounded memory.

        ``async for record in repo.scan(): ...``; arguments and capability are
        checked at the call, the records come a batch (one ``get_many``) at a time.
        """
        return self._scan(_keyspace.records(self, batch, errors))

    async def _scan(self, next_batch: Callable[[], Op[list[T] | None]]) -> AsyncIterator[T]:
        while (found := await self._run(next_batch())) is not None:
            for record in found:
                yield record

    async def migrate(
        self,
        *,
        batch: int = 500,
        progress: Callable[[MigrationReport], object] | None = None,
    ) -> MigrationReport:
        """Rewrite every stale record of the namespace by compare-and-set; the report.

        See :meth:`Repository.migrate <cacheorm.Repository.migrate>`.
        """
        from cacheorm._migrate import migrate

        return await self._run(migrate(self, batch, progress))


def _after_refresh(
    repo: AsyncRepository[Any], generation: Generation, method: Callable[..., Awaitable[R]]
) -> Callable[..., Awaitable[R]]:
    """``method``, after reading the namespace's generation if the cached one is stale."""

    @functools.wraps(method)
    async def fresh(*args: Any, **kwargs: Any) -> R:
        if generation.stale():
            await repo._run(generation.refresh())
        return await method(*args, **kwargs)

    return fresh


_ASYNC_METHODS = (
    "get", "get_many", "set", "set_many", "add", "add_many", "replace", "replace_many",
    "delete", "delete_many", "exists", "incr", "gets", "cas", "aclose",
)  # fmt: skip


def _is_async_backend(backend: object) -> bool:
    return not isinstance(backend, type) and all(
        inspect.iscoroutinefunction(getattr(backend, name, None)) for name in _ASYNC_METHODS
    )


def _not_an_async_backend(model: type, backend: object) -> ConfigurationError:
    """The error for a ``backend=`` that is not an async backend, with the fix."""
    call = f"AsyncRepository({model.__qualname__}, backend=...)"
    if isinstance(backend, type):
        return ConfigurationError(
            f"{call} expects a backend instance, got the class {backend.__qualname__}; "
            f"write backend={backend.__qualname__}(...)"
        )
    kind = type(backend)
    name = f"{kind.__module__}.{kind.__qualname__}"
    package = kind.__module__.partition(".")[0]
    if package in ("redis", "pymemcache", "aiomcache"):
        wrapper = (
            "cacheorm.AsyncRedisBackend.from_url(url)"
            if package == "redis"
            else "cacheorm.AsyncMemcachedBackend.from_servers(['host:port'])"
        )
        return ConfigurationError(
            f"{call} expects a cacheorm async backend, got a raw {name} client; cacheorm "
            f"speaks the protocol itself: backend={wrapper}"
        )
    sync = getattr(backend, "get", None)
    if callable(sync) and not inspect.iscoroutinefunction(sync):
        return ConfigurationError(
            f"{call} got the sync backend {name}; AsyncRepository needs an async one: "
            "AsyncMemoryBackend(), AsyncFileSystemBackend(directory), "
            "AsyncRedisBackend.from_url(url) or AsyncMemcachedBackend.from_servers(addresses) "
            "(AsyncMemoryBackend.wrap(memory_backend) shares a sync MemoryBackend's data), "
            "or use the sync Repository with it"
        )
    missing = [
        m for m in _ASYNC_METHODS if not inspect.iscoroutinefunction(getattr(backend, m, None))
    ]
    return ConfigurationError(
        f"{call} got {name}, which does not implement the cacheorm AsyncBackend protocol "
        f"(missing async methods: {', '.join(missing)})"
    )
