"""``Repository[T]``: one dataclass model bound to a sync backend, serializer, keys and TTL.

The logic of every operation lives in :class:`~cacheorm._core.RepositoryCore`
(shared with ``AsyncRepository``); this class runs it on a sync backend:
single-call operations call the backend directly, multi-step ones are driven
by :func:`cacheorm._ops.drive`.
"""

# pyright: reportPrivateUsage=false
# (the repository drives its helpers (_signals, _versions) through their private API.)

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from typing_extensions import Unpack

from cacheorm._backend import Backend, Closing
from cacheorm._core import (
    LOCK_TIMEOUT,
    UPDATE_ATTEMPTS,
    RepositoryCore,
    RepositoryOptions,
    registry,
)
from cacheorm._errors import ConfigurationError
from cacheorm._flight import SingleFlight
from cacheorm._ops import Op, drive
from cacheorm._ttl import DEFAULT, KEEP_TTL, TTLArg, UpdateTTLArg
from cacheorm._versions import MigrationReport

__all__ = ["Repository", "registry"]

T = TypeVar("T")
R = TypeVar("R")


class Repository(RepositoryCore[T], Closing):
    """Stores records of one dataclass model.

    Args:
        model: the dataclass. It is read once, here; cacheorm never changes it.
        backend: where bytes live; a new private :class:`~cacheorm.MemoryBackend`
            if omitted.
        **options: the keyword arguments below (``AsyncRepository`` takes the same).

    Keyword Args:
        serializer (str | Serializer):
            a registry name (``"json"``, ``"msgpack"``, ``"pickle"``, ...)
            or a serializer object. Resolved once, here. ``"json"`` by default.
        key (str | Callable[[Any], str] | None):
            a key template (``"collection.{collector}.{article}"`` or
            ``"collection.%s.%d"``) or a callable ``pk -> str``; by default
            ``"<namespace>:<pk>"`` with composite parts joined by ``:``.
        namespace (str | None): the default scheme's namespace; the lower-cased class name
            if omitted. Repositories of one class share it (in every process);
            two classes whose names differ only in case cannot both use the
            default in one process (``ModelDefinitionError``).
        prefix (str): prepended to every key (for instance ``"myapp:"``).
        ttl (TTL): the default TTL of writes: seconds, ``timedelta``, or None / 0 for
            no expiry.
        registry (SerializerRegistry | None): the registry to resolve a serializer name in
            (``cacheorm.registry`` by default).
        hooks (Sequence[Hook]): functions called with an :class:`~cacheorm.OperationEvent` after
            every operation (metrics, tracing: see :mod:`cacheorm.otel`). A
            repository without hooks pays nothing for them.
        allow_subclasses (bool): store an instance of a subclass of ``model`` (or of a
            nested model) as that model, leaving its extra fields out; it reads
            back as the base class. By default such an instance is refused with
            a ``ValidationError``, since it would lose fields.
        version (int | None): the schema version this code writes (an int >= 1; see
            docs/schema-evolution.md). Records carry it; version 1 writes none,
            so records written without versions read as version 1.
        upgrades (Mapping[int, Upgrade] | None):
            ``{n: fn}``: ``fn`` turns the stored dict of version ``n``
            into the dict of version ``n + 1``; a record of an older version
            is upgraded step by step when read.
        newer (Literal['error', 'ignore']):
            what reading a record of a newer version than ``version`` does:
            ``"error"`` (a ``DeserializationError`` naming both versions) or
            ``"ignore"`` (read it, leaving out the fields this model lacks).
        read_also (Sequence[str | Serializer]):
            serializers (names or objects) that earlier code wrote this
            namespace with; a record the serializer cannot read is tried with
            each in order, strictly (the bytes must parse whole into a map).
        rewrite_on_read (bool): write a record read in an older version or an earlier
            serializer back in the current one, by compare-and-set keeping its
            TTL (a write that landed meanwhile is never overwritten).
        generations (bool): put the namespace's generation in every key
            (``<key>#g<generation>``), so that :meth:`clear` is one ``incr``
            on every backend, memcached included (see
            docs/ttl-and-namespaces.md). Off by default: it changes every key.
        generation_ttl (float): seconds (> 0) each process keeps its copy of the
            generation. Another process sees a ``clear()`` at most this long
            after it; the clearing one at once.

    A repository built without ``backend=`` owns its ``MemoryBackend``:
    :meth:`close` (or leaving a ``with`` block) closes it. A backend passed in
    belongs to the caller and is never closed by the repository.

    Raises:
        ModelDefinitionError: the model cannot be stored (not a dataclass
            class, no primary key, unsupported annotation, two ``Field``s on
            one attribute, a default namespace another class already uses, ...).
        ConfigurationError: bad backend, serializer, key template or TTL.
    """

    _backend: Backend

    def __init__(
        self,
        model: type[T],
        *,
        backend: Backend | None = None,
        **options: Unpack[RepositoryOptions],
    ) -> None:
        self._flights: SingleFlight[Any] = SingleFlight()
        super().__init__(model, backend, **options)

    def _default_backend(self) -> Backend:
        from cacheorm._memory import MemoryBackend

        return MemoryBackend()

    def _refuse_backend(self, model: type, backend: object) -> ConfigurationError | None:
        if isinstance(backend, type) or not isinstance(backend, Backend):
            return _not_a_backend(model, backend)
        return None

    def _run(self, op: Op[R]) -> R:
        """Run one of the core's operations on this repository's backend."""
        return drive(op, self._backend, self._flights)

    def _rewrite_stale(self, op: Op[Any]) -> None:
        """``rewrite_on_read``: rewrite the record before the read returns."""
        self._run(op)

    @property
    def backend(self) -> Backend:
        """The backend records are stored in."""
        return self._backend

    def close(self) -> None:
        """Close the backend if this repository created it (no ``backend=``); else nothing.

        A backend passed in belongs to the caller, who may share it between
        repositories, so it stays open.
        """
        if self._owns_backend:
            self._backend.close()

    # -- reads ------------------------------------------------------------------

    def get(self, pk: Any) -> T:
        """The record with primary key ``pk``.

        Raises:
            NotFound: no record under that key.
            DeserializationError: the stored bytes do not decode into the model,
                or decode into a record with another primary key (a value
                copied or written under the wrong key). Every read checks this.
        """
        key = self._key_for(pk)
        payload = self._backend.get(key)
        if payload is None:
            raise self._not_found(pk, key)
        return self._load(key, payload, pk)

    def get_or_none(self, pk: Any) -> T | None:
        """The record with primary key ``pk``, or None."""
        key = self._key_for(pk)
        payload = self._backend.get(key)
        return None if payload is None else self._load(key, payload, pk)

    def get_many(self, pks: Iterable[Any]) -> list[T | None]:
        """The records for ``pks`` in the same order, None where missing; one backend call."""
        if not isinstance(pks, list):
            pks = list(pks)
        keys = [self._key_for(pk) for pk in pks]
        return self._loaded(pks, keys, self._backend.get_many(keys)) if keys else []

    def exists(self, pk: Any) -> bool:
        """True if a record is stored under ``pk``."""
        return self._backend.exists(self._key_for(pk))

    # -- writes -----------------------------------------------------------------

    def create(self, obj: T, *, ttl: TTLArg = DEFAULT) -> T:
        """Insert ``obj`` if its key is free, atomically, and return it.

        With ``Field(auto=True)`` and a ``None`` key, the key is taken from an
        atomic counter (``<prefix><namespace>:__seq__``) and the returned record
        carries it. If that id is taken (the counter was evicted or flushed, or
        ids were given by hand), the counter is moved past it by a growing
        step (1, 2, 4, ...) and the next id tried, so a lost counter costs
        O(log n) round trips, never an ``AlreadyExists``.

        Signals: ``pre_create`` (an auto-id record still has id None, and key
        and pk None), then ``post_create`` (with the id) once it is stored.

        Raises:
            AlreadyExists: a record is stored under the key; nothing was written.
            ValidationError: ``obj`` does not match the model; nothing was written.
        """
        if self._signalled or self._auto is not None:
            return self._run(self._op_create(obj, ttl))
        key, payload = self._dump(obj)
        if not self._backend.add(
            key, payload, self._ttl if ttl is DEFAULT else self._resolve_ttl(ttl)
        ):
            raise self._taken(key)
        return obj

    def save(self, obj: T, *, ttl: TTLArg = DEFAULT) -> T:
        """Store ``obj`` whether or not it exists (upsert) and return it."""
        if self._signalled:
            return self._run(self._op_save(obj, ttl))
        key, payload = self._dump(obj)
        self._backend.set(key, payload, self._resolve_ttl(ttl))
        return obj

    def update(self, obj: T, *, ttl: UpdateTTLArg = KEEP_TTL) -> T:
        """Replace the stored record with ``obj``, atomically, only if it exists.

        Args:
            obj: the new record.
            ttl: by default (:data:`~cacheorm.KEEP_TTL`) the record keeps the
                remaining TTL it had; :data:`~cacheorm.DEFAULT` gives it the
                repository's TTL; seconds, a ``timedelta`` or None set it.

        Raises:
            NotFound: nothing is stored under the key; nothing was written.
        """
        if self._signalled:
            return self._run(self._op_update(obj, ttl))
        key, payload = self._dump(obj)
        if not self._backend.replace(key, payload, self._resolve_update_ttl(ttl)):
            raise self._not_to_update(key)
        return obj

    def get_or_create(self, obj: T, *, ttl: TTLArg = DEFAULT) -> tuple[T, bool]:
        """The stored record with ``obj``'s key, or ``obj`` inserted now.

        Returns:
            ``(record, created)``: ``created`` is True if ``obj`` was inserted.

        Signals: create signals only when it inserts. With a receiver
        connected it reads first: a stored record is returned without any
        signal; else ``pre_create``, the insert and ``post_create``. If another
        writer inserts in between, its record is returned and no
        ``post_create`` is sent.
        """
        return self._run(self._op_get_or_create(obj, ttl))

    # -- read-modify-write ----------------------------------------------------------

    def update_with(
        self,
        pk: Any,
        fn: Callable[[T], T],
        *,
        ttl: UpdateTTLArg = KEEP_TTL,
        attempts: int = UPDATE_ATTEMPTS,
    ) -> T:
        """Replace the record with ``fn(record)``, atomically, and return the new record.

        Reads the record with a compare-and-set token, applies ``fn`` and
        writes the result only if nobody changed the record in between
        (Redis: a Lua script on the key; Memcached: ``gets``/``cas``; memory
        and filesystem: under their lock). On a conflict it reads again and
        calls ``fn`` again, with a short jittered back-off, so ``fn`` must be
        a pure function of the record. Concurrent ``update_with`` calls on
        one record therefore never lose an update, and an update racing a
        ``delete`` never brings the record back.

        Args:
            pk: the primary key.
            fn: the new record from the current one (a new object, or the same
                one changed; ``dataclasses.replace`` suits frozen models). It
                must keep the primary key.
            ttl: the TTL of the written record, as for :meth:`update`: by
                default the record keeps its remaining TTL.
            attempts: how many reads and compare-and-sets to try before giving up.

        Raises:
            NotFound: no record under ``pk`` (also when it is deleted meanwhile).
            ConflictError: ``attempts`` compare-and-sets all lost to other
                writers; nothing was written.
            ValidationError: ``fn`` returned something that is not a valid
                record of the model, or changed its primary key; nothing was written.
            OutcomeUnknown: the connection failed after a compare-and-set was
                sent, so it may have been applied; it is never resent.

        Signals: ``pre_update`` before each compare-and-set attempt (with that
        attempt's record and ``event.attempt``; a receiver that raises stops
        the retries and nothing is written), ``post_update`` once, after the
        compare-and-set that won.
        """
        return self._run(self._op_update_with(pk, fn, ttl, attempts, "update_with"))

    def patch(
        self,
        pk: Any,
        changes: Mapping[str, Any] | None = None,
        /,
        *,
        ttl: UpdateTTLArg = KEEP_TTL,
        **fields: Any,
    ) -> T:
        """Set some fields of the stored record, atomically; the new record.

        ``repo.patch(1, name="Sam")`` or ``repo.patch(1, {"name": "Sam"})``
        (the mapping form also reaches a field called ``ttl``). It is
        :meth:`update_with` with ``dataclasses.replace``, so it is safe
        against concurrent writers the same way. The record keeps its
        remaining TTL unless ``ttl=`` says otherwise (as for :meth:`update`).

        Raises:
            ValidationError: a name is not an init field of the model, is part
                of the primary key, or a value does not fit its annotation;
                checked before anything is written.
            NotFound, ConflictError, OutcomeUnknown: as for :meth:`update_with`.
        """
        fn = self._patcher(changes, fields)
        return self._run(self._op_update_with(pk, fn, ttl, UPDATE_ATTEMPTS, "patch"))

    # -- read-through -------------------------------------------------------------------

    def get_or_load(
        self,
        pk: Any,
        loader: Callable[[], T],
        *,
        ttl: TTLArg = DEFAULT,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> T:
        """The cached record, or the one ``loader()`` returns, cached now (read-through).

        Stampede protection: when many callers miss the same key at once,
        ``loader`` runs once. Within one process the other callers wait for
        that call and share its result or its exception; across processes a
        lease in the backend (an atomic ``add`` of ``<key>\\0lease`` that
        expires after ``lock_timeout`` seconds) lets one process load while the
        others poll for the value. No caller waits longer than
        ``lock_timeout``: then it loads itself. If the store fails while the
        lease is taken (its reply lost, say), the caller loads without it.

        The loaded record is cached only if the key is still empty (an
        insert-if-absent): a record that another caller wrote while the loader
        ran wins, and is what this call returns. A cache fill never
        overwrites a real write. A fill is not a write of application data:
        it sends no signals (``pre_create``, ``pre_save``, ...).

        Args:
            pk: the primary key.
            loader: returns the record (from your database, say). It must carry
                ``pk``. If it raises, the exception propagates (to every caller
                waiting in this process) and nothing is cached; waiting
                processes then try to load themselves.
            ttl: the cached record's TTL, as for :meth:`save`.
            lock_timeout: how long one load may hold the lease, and how long
                a caller waits for another's load, in seconds; make it longer
                than the loader's slowest run.

        Raises:
            ValidationError: the loader returned something that is not a
                record of the model, or a record with another primary key.
            BackendError: the store failed; it names the record's key, never
                the internal lease key.
        """
        return self._run(self._op_get_or_load(pk, loader, ttl, lock_timeout))

    def get_or_load_many(
        self,
        pks: Iterable[Any],
        loader: Callable[[list[Any]], Iterable[T]],
        *,
        ttl: TTLArg = DEFAULT,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> list[T | None]:
        """:meth:`get_or_load` for many keys: the records in input order, None where not found.

        One ``get_many`` finds the cached records; the missing keys are leased
        in one ``add_many``; ``loader`` is called once with the primary keys
        this call leased (in input order, without duplicates) and returns the
        records it found, in any order (a list, say); those are cached in one
        ``add_many``, so keys written meanwhile keep their value and return
        it. Keys another caller is loading are polled for until its value
        arrives or its lease goes, for at most ``lock_timeout``, then loaded
        here. A key the loader did not return is None in the result and is
        not cached.

        Raises:
            ValidationError: the loader returned something other than an
                iterable of records, or a record whose key was not asked for.
        """
        return self._run(self._op_get_or_load_many(pks, loader, ttl, lock_timeout))

    def delete(self, pk: Any) -> bool:
        """Remove the record with primary key ``pk``; True if it existed.

        Signals: ``pre_delete`` and ``post_delete`` (``event.deleted`` 0 or 1)
        are sent whether or not a record was stored.
        """
        if self._signalled:
            return self._run(self._op_delete(pk))
        return self._backend.delete(self._key_for(pk))

    def delete_many(self, pks: Iterable[Any]) -> int:
        """Remove the records for ``pks`` in one backend call; how many existed."""
        pks = list(pks)
        keys = [self._key_for(pk) for pk in pks]
        if not keys:
            return 0
        if self._signalled:
            return self._run(self._op_delete_many(pks, keys))
        return self._backend.delete_many(keys)

    # -- batch writes -------------------------------------------------------------

    def create_many(self, objs: Iterable[T], *, ttl: TTLArg = DEFAULT) -> list[T]:
        """Insert every record whose key is free, in one backend call.

        Never overwrites. Records are validated before anything is written.
        Auto ids come from one counter increment; ids found taken (a lost
        counter) are replaced by new ones past them, as in :meth:`create`.

        Signals: one ``pre_create`` with the whole batch before any I/O (auto
        ids None), one ``post_create`` with the records written (their ids).

        Raises:
            AlreadyExists: some keys were taken; ``.keys`` lists them. The other
                records *were* written.
        """
        return self._run(self._op_create_many(objs, ttl))

    def save_many(self, objs: Iterable[T], *, ttl: TTLArg = DEFAULT) -> list[T]:
        """Store every record (upsert) in one backend call."""
        seconds = self._resolve_ttl(ttl)
        objs = list(objs)
        items = [self._dump(obj) for obj in objs]
        if items:
            if self._signalled:
                return self._run(self._op_save_many(objs, items, seconds))
            self._backend.set_many(items, seconds)
        return objs

    def update_many(self, objs: Iterable[T], *, ttl: UpdateTTLArg = KEEP_TTL) -> list[T]:
        """Replace every stored record in one backend call; absent ones are not written.

        Each record keeps its remaining TTL unless ``ttl=`` says otherwise (as
        for :meth:`update`).

        Raises:
            NotFound: some records were absent; ``.keys`` lists them. The others
                *were* updated.
        """
        return self._run(self._op_update_many(objs, ttl))

    # -- references (implemented in cacheorm._refs) ----------------------------------

    @typing.overload
    def load_related(
        self,
        records: Iterable[T | None],
        field: str | Sequence[str],
        target: Repository[U],
        *,
        missing: typing.Literal["raise"] = "raise",
    ) -> dict[Any, U]: ...

    @typing.overload
    def load_related(
        self,
        records: Iterable[T | None],
        field: str | Sequence[str],
        target: Repository[U],
        *,
        missing: typing.Literal["none"],
    ) -> dict[Any, U | None]: ...

    def load_related(
        self,
        records: Iterable[T | None],
        field: str | Sequence[str],
        target: Repository[U],
        *,
        missing: typing.Literal["raise", "none"] = "raise",
    ) -> dict[Any, U] | dict[Any, U | None]:
        """The ``target`` records that ``field`` of ``records`` refers to, by primary key.

        ``field`` is a reference field (``Annotated[int, co.Ref(User)]``), or
        several that refer to the same model. However many records and
        references, it costs one ``target.get_many`` (none when nothing is
        referred to); ``None`` records and ``None`` references are skipped and
        a key referred to many times is read once. For nested references
        (post -> author -> company), call it again on the values: one round
        trip per level.

        Args:
            records: records of this repository's model (``None`` is skipped,
                so a ``get_many`` result can be passed as is).
            field: the reference field's name, or a list of names.
            target: the repository of the referenced model.
            missing: ``"raise"`` (a :class:`~cacheorm.NotFound` naming the
                referring field and the missing keys) or ``"none"`` (the key
                maps to ``None``) when a referenced record is not stored.

        Returns:
            ``{primary key: record}`` for every key referred to, so
            ``authors[post.author_id]`` is the post's author.

        Raises:
            ConfigurationError: no such field, not a ``Ref``, or a ``Ref`` to
                another model than ``target``'s.
            ModelDefinitionError: the ``Ref`` target cannot be resolved or does
                not fit the target's key (composite keys need tuples).
            ValidationError: a record of another model, or a reference that
                is not a valid key of the target model.
            NotFound: ``missing="raise"`` and referenced records are not stored.
        """
        from cacheorm._refs import load_related

        return load_related(self, records, field, target, missing)

    # -- TTL and namespace operations (implemented in cacheorm._keyspace) ---------------

    def touch(self, pk: Any, *, ttl: TTLArg = DEFAULT) -> bool:
        """Give the record under ``pk`` a new TTL (the repository's by default); True if found.

        An absent record is not an error (like :meth:`delete`): the result is
        False and nothing is written. Idempotent, so it follows the backend's
        retry policy for reads.

        Raises:
            ConfigurationError: the backend lacks the
                :class:`~cacheorm.TTLBackend` capability.
        """
        from cacheorm import _keyspace

        return self._run(_keyspace.touch(self, pk, self._resolve_ttl(ttl)))

    def touch_many(self, pks: Iterable[Any], *, ttl: TTLArg = DEFAULT) -> list[bool]:
        """:meth:`touch` for each primary key, in one backend call; which were found, in order."""
        from cacheorm import _keyspace

        return self._run(_keyspace.touch_many(self, list(pks), self._resolve_ttl(ttl)))

    def ttl_of(self, pk: Any) -> float | None:
        """Seconds until the record under ``pk`` expires, or None if it never does.

        Precision is the backend's: milliseconds on Redis, whole seconds on
        memcached (which rounds a TTL up and adds one second).

        Raises:
            NotFound: no record under ``pk``.
            ConfigurationError: the backend lacks the
                :class:`~cacheorm.TTLBackend` capability.
        """
        from cacheorm import _keyspace

        return self._run(_keyspace.ttl_of(self, pk))

    def clear(self, *, batch: int = 500) -> int:
        """Delete every record of this repository, ``batch`` keys at a time; how many.

        Only keys of this repository's shape under its prefix and namespace
        are deleted (``user`` never touches ``users``); the auto-id counter is
        kept, so ids are not reused, and ``get_or_load`` leases are left to
        expire. Records written while it runs may survive.

        With ``generations=True`` it works on every backend: one ``incr``
        moves the namespace to a new generation, so this repository sees none
        of the old records at once and other processes within their
        ``generation_ttl``. Where the backend can list keys the records of the
        older generations are then deleted and counted; elsewhere (memcached,
        or a key function) none are deleted, 0 is returned, and the old
        records are left to their TTL or the LRU.

        Raises:
            ConfigurationError: the backend cannot enumerate keys
                (:class:`~cacheorm.ScanBackend`; memcached cannot), or the
                key scheme is a key function (both: unless ``generations=True``).
        """
        from cacheorm import _keyspace

        return self._run(_keyspace.clear(self, batch))

    def count(self, *, batch: int = 500) -> int:
        """How many records this repository holds, by a key scan (no values are read).

        Raises:
            ConfigurationError: as :meth:`clear`.
        """
        from cacheorm import _keyspace

        return self._run(_keyspace.count(self, batch))

    def scan(
        self, *, batch: int = 500, errors: typing.Literal["raise", "skip"] = "raise"
    ) -> typing.Iterator[T]:
        """Every record of this repository, in no particular order, with bounded memory.

        A generator: the keys are listed ``batch`` at a time and each batch
        is read with one ``get_many``. A record deleted or expired meanwhile
        is left out.

        Args:
            batch: keys per scan step and per ``get_many``.
            errors: ``"raise"`` (a :class:`~cacheorm.DeserializationError`
                naming the key) or ``"skip"`` for records that do not decode.

        Raises:
            ConfigurationError: as :meth:`clear`.
        """
        from cacheorm import _keyspace

        return self._scan(_keyspace.records(self, batch, errors))

    def _scan(self, next_batch: Callable[[], Op[list[T] | None]]) -> typing.Iterator[T]:
        while (found := self._run(next_batch())) is not None:
            yield from found

    # -- schema versions and serializer changes (cacheorm._versions, cacheorm._migrate) ----

    def migrate(
        self,
        *,
        batch: int = 500,
        progress: Callable[[MigrationReport], object] | None = None,
    ) -> MigrationReport:
        """Rewrite every record of the namespace in the current version and serializer.

        Walks the namespace's keys ``batch`` at a time (one ``get_many`` per
        batch); each record in an older version or an earlier serializer
        (``read_also``) is upgraded and stored again by compare-and-set,
        keeping its TTL, so a record written meanwhile is never overwritten:
        it is read again and, if still stale, rewritten. Records that do not
        decode are left as they are and counted as failed. Re-running is
        safe and cheap (current records are only read), so a migration
        interrupted midway is resumed by running it again.

        Args:
            batch: keys per scan step and per ``get_many``.
            progress: called with the report so far after every batch.

        Raises:
            ConfigurationError: the backend cannot enumerate keys (memcached
                cannot), or the key scheme is a key function.
        """
        from cacheorm._migrate import migrate

        return self._run(migrate(self, batch, progress))


#: What a backend wrapper to suggest for a raw client of these packages.
_WRAPPERS = {
    "redis": "cacheorm.RedisBackend(client), or cacheorm.RedisBackend.from_url(url)",
    "pymemcache": "cacheorm.MemcachedBackend(client), or "
    "cacheorm.MemcachedBackend.from_servers(['host:port'])",
}


def _not_a_backend(model: type, backend: object) -> ConfigurationError:
    """The error for a ``backend=`` that is not a Backend, with the fix."""
    call = f"Repository({model.__qualname__}, backend=...)"
    if isinstance(backend, type):
        return ConfigurationError(
            f"{call} expects a backend instance, got the class {backend.__qualname__}; "
            f"write backend={backend.__qualname__}(...)"
        )
    kind = type(backend)
    package = kind.__module__.partition(".")[0]
    name = f"{kind.__module__}.{kind.__qualname__}"
    if package in _WRAPPERS:
        return ConfigurationError(
            f"{call} expects a cacheorm backend, got a raw {name} client; wrap it: "
            f"backend={_WRAPPERS[package]}"
        )
    methods = [m for m in _BACKEND_METHODS if not callable(getattr(backend, m, None))]
    return ConfigurationError(
        f"{call} got {name}, which does not implement the cacheorm Backend protocol "
        f"(missing: {', '.join(methods)}); use cacheorm.MemoryBackend(), "
        "FileSystemBackend(directory), RedisBackend.from_url(url) or "
        "MemcachedBackend.from_servers(addresses)"
    )


_BACKEND_METHODS = (
    "get", "get_many", "set", "set_many", "add", "add_many", "replace", "replace_many",
    "delete", "delete_many", "exists", "incr", "gets", "cas", "close",
)  # fmt: skip


#: The referenced model of :meth:`Repository.load_related` (see cacheorm._refs).
U = TypeVar("U")
