"""``Repository[T]``: one dataclass model bound to a backend, serializer, keys and TTL."""

# pyright: reportPrivateUsage=false
# (the repository drives its helpers (_signals, _versions) through their private API.)

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import operator
import threading
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast, get_args, get_origin

from cacheorm._backend import Backend, Closing
from cacheorm._codecs import Failure
from cacheorm._errors import (
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    ConflictError,
    DeserializationError,
    ModelDefinitionError,
    NotFound,
    SerializationError,
    ValidationError,
    describe_keys,
    safe_repr,
)
from cacheorm._fast import fast_codec, fast_load
from cacheorm._flight import LEASE_SUFFIX, Lease, SingleFlight, backoff_delays, new_token
from cacheorm._generation import SUFFIX, Generation
from cacheorm._keys import KeyPart, KeyScheme, parse_template
from cacheorm._keys import _unwrap as unwrap_annotation  # pyright: ignore[reportPrivateUsage]
from cacheorm._observe import Hook, get_logger, instrument
from cacheorm._schema import CompiledModel, FieldSpec, compile_model
from cacheorm._serializers import Serializer, SerializerRegistry, default_registry
from cacheorm._signals import RepositorySignals
from cacheorm._ttl import (
    DEFAULT,
    KEEP_TTL,
    TTL,
    BackendTTL,
    TTLArg,
    UpdateTTLArg,
    normalize_ttl,
)
from cacheorm._versions import Evolution, MigrationReport, Upgrade

_log = get_logger("repository")

__all__ = ["Repository", "registry"]

T = TypeVar("T")

#: The default serializer registry: json, msgpack and pickle.
registry = default_registry()

_GET_OR_CREATE_ATTEMPTS = 5
#: Compare-and-set attempts of update_with / patch before ConflictError.
UPDATE_ATTEMPTS = 100
#: Seconds a get_or_load lease is held at most (a crashed loader blocks no longer).
LOCK_TIMEOUT = 10.0
#: How many ids an auto-id create tries before giving up. Each taken id moves
#: the counter on by twice the step before, so 48 tries skip up to 2**48 ids:
#: a counter that was lost (evicted, flushed) is past every stored id in
#: O(log n) round trips.
#: dataclasses.replace, untyped: typeshed bounds it to dataclass instances, which T is not.
_replace: Callable[..., Any] = dataclasses.replace

_ID_ATTEMPTS = 48

#: (prefix, default namespace) -> the name of the class that took it, in this
#: process. Two classes whose names differ only in case would otherwise share
#: keys silently (``URL`` and ``Url`` both default to ``url``).
_DEFAULT_NAMESPACES: dict[tuple[str, str], str] = {}
_DEFAULT_NAMESPACES_LOCK = threading.Lock()


class Repository(Closing, Generic[T]):
    """Stores records of one dataclass model.

    Args:
        model: the dataclass. It is read once, here; cacheorm never changes it.
        backend: where bytes live; a new private :class:`~cacheorm.MemoryBackend`
            if omitted.
        serializer: a registry name (``"json"``, ``"msgpack"``, ``"pickle"``, ...)
            or a serializer object. Resolved once, here. ``"json"`` by default.
        key: a key template (``"collection.{collector}.{article}"`` or
            ``"collection.%s.%d"``) or a callable ``pk -> str``; by default
            ``"<namespace>:<pk>"`` with composite parts joined by ``:``.
        namespace: the default scheme's namespace; the lower-cased class name
            if omitted. Repositories of one class share it (in every process);
            two classes whose names differ only in case cannot both use the
            default in one process (``ModelDefinitionError``).
        prefix: prepended to every key (for instance ``"myapp:"``).
        ttl: the default TTL of writes: seconds, ``timedelta``, or None / 0 for
            no expiry.
        registry: the registry to resolve a serializer name in
            (``cacheorm.registry`` by default).
        hooks: functions called with an :class:`~cacheorm.OperationEvent` after
            every operation (metrics, tracing: see :mod:`cacheorm.otel`). A
            repository without hooks pays nothing for them.
        allow_subclasses: store an instance of a subclass of ``model`` (or of a
            nested model) as that model, leaving its extra fields out; it reads
            back as the base class. By default such an instance is refused with
            a ``ValidationError``, since it would lose fields.
        version: the schema version this code writes (an int >= 1; see
            docs/schema-evolution.md). Records carry it; version 1 writes none,
            so records written without versions read as version 1.
        upgrades: ``{n: fn}``: ``fn`` turns the stored dict of version ``n``
            into the dict of version ``n + 1``; a record of an older version
            is upgraded step by step when read.
        newer: what reading a record of a newer version than ``version`` does:
            ``"error"`` (a ``DeserializationError`` naming both versions) or
            ``"ignore"`` (read it, leaving out the fields this model lacks).
        read_also: serializers (names or objects) that earlier code wrote this
            namespace with; a record the serializer cannot read is tried with
            each in order, strictly (the bytes must parse whole into a map).
        rewrite_on_read: write a record read in an older version or an earlier
            serializer back in the current one, by compare-and-set keeping its
            TTL (a write that landed meanwhile is never overwritten).
        generations: put the namespace's generation in every key
            (``<key>#g<generation>``), so that :meth:`clear` is one ``incr``
            on every backend, memcached included (see
            docs/ttl-and-namespaces.md). Off by default: it changes every key.
        generation_ttl: seconds (> 0) each process keeps its copy of the
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

    def __init__(
        self,
        model: type[T],
        *,
        backend: Backend | None = None,
        serializer: str | Serializer = "json",
        key: str | Callable[[Any], str] | None = None,
        namespace: str | None = None,
        prefix: str = "",
        ttl: TTL = None,
        registry: SerializerRegistry | None = None,
        allow_subclasses: bool = False,
        hooks: Sequence[Hook] = (),
        version: int | None = None,
        upgrades: Mapping[int, Upgrade] | None = None,
        newer: typing.Literal["error", "ignore"] = "error",
        read_also: Sequence[str | Serializer] = (),
        rewrite_on_read: bool = False,
        generations: bool = False,
        generation_ttl: float = 1.0,
    ) -> None:
        if not isinstance(model, type):
            raise _not_a_model_class(model)
        if not isinstance(allow_subclasses, bool):
            raise ConfigurationError(f"allow_subclasses must be a bool, not {allow_subclasses!r}")
        self._owns_backend = backend is None
        if backend is None:
            from cacheorm._memory import MemoryBackend

            store: Backend = MemoryBackend()
        elif isinstance(backend, type) or not isinstance(backend, Backend):
            raise _not_a_backend(model, backend)
        else:
            store = backend
        self._serializer = _resolve_serializer(serializer, registry)
        self._dumps = self._serializer.dumps
        compiled: CompiledModel[T] = compile_model(
            model, binary=self._serializer.binary, allow_subclasses=allow_subclasses
        )
        self._model = model
        self._compiled = compiled
        self._encode = compiled.encode
        self._decode = compiled.decode
        fast = fast_codec(compiled, self._serializer)  # None without msgspec
        self._fast_decode = None if fast is None else fast.decode  # for versioned reads
        if fast is not None:
            self._dumps = fast.dumps
            if fast.encode is not None:  # checks, then orjson / ormsgpack write the record
                self._encode = fast.encode
            self._decode_payload = fast_load(fast.decode, self._decode_payload)  # type: ignore[method-assign,assignment]
        self._backend = store
        self._ttl = normalize_ttl(ttl)
        self._ttl_arg = ttl
        default_namespace = namespace is None
        if namespace is None:
            namespace = model.__name__.lower()
        elif not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace must be a non-empty str, not {namespace!r}")
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a str, not {prefix!r}")
        self._namespace = namespace
        self._prefix = prefix
        if key is not None and not (isinstance(key, str) or callable(key)):
            raise ConfigurationError(f"key must be a template str or a callable, not {key!r}")
        parts = self._key_parts(key)
        self._keys = KeyScheme(
            model,
            parts,
            namespace=namespace,
            prefix=prefix,
            template=key,
        )
        self._key_for = self._keys.render
        self._key_of = self._keys.render_of
        self._generation: Generation | None = None
        if generations is not False:
            self._use_generations(generations, generation_ttl)
        elif generation_ttl != 1.0:
            raise ConfigurationError(
                f"{model.__qualname__}: generation_ttl= needs generations=True"
            )
        # Reads check that the record decoded is the one asked for: its key
        # fields must equal the primary key (one attribute, or a tuple).
        attrs = [part.attr for part in parts]
        self._pk_get = operator.attrgetter(*attrs)
        # Equal values render to one key, except datetimes (equal instants at
        # other UTC offsets) and Literal mixes like True == 1: compare keys too.
        self._render_check = any(_renders_unlike_equal(part.annotation) for part in parts)
        if default_namespace and key is None:
            _claim_default_namespace(model, prefix, namespace)
        self._key_attrs = frozenset(part.attr for part in parts)
        self._flights: SingleFlight[Any] = SingleFlight()
        auto = compiled.spec.auto_field
        self._auto: FieldSpec | None = auto
        self._counter_key = f"{prefix}{namespace}:__seq__"
        # True while any signal receiver concerns this repository (kept by
        # RepositorySignals): a write checks it once, and nothing more if false.
        self._signalled = False
        self._signals: RepositorySignals[T] = RepositorySignals(self)
        self._evolution: Evolution[T] | None = None
        if version is not None or upgrades is not None or read_also or rewrite_on_read:
            self._evolve(version, upgrades, newer, read_also, rewrite_on_read, registry)
        elif newer != "error":
            raise ConfigurationError(
                f"{model.__qualname__}: newer= needs version= (the version this code writes)"
            )
        if hooks:
            if isinstance(hooks, str) or not all(callable(hook) for hook in hooks):
                raise ConfigurationError(
                    f"hooks must be a sequence of callables taking an OperationEvent, not {hooks!r}"
                )
            instrument(self, hooks)

    def _use_generations(self, generations: object, generation_ttl: object) -> None:
        """Wrap the key functions so every key ends with ``#g<generation>``."""
        if generations is not True:
            raise ConfigurationError(f"generations must be a bool, not {generations!r}")
        # > 0: with 0, a get_many would read the generation once per key.
        seconds = _positive("generation_ttl", generation_ttl)
        generation = Generation(self._backend, f"{self._prefix}{self._namespace}:__gen__", seconds)
        self._generation = generation
        render, render_of, suffix = self._key_for, self._key_of, generation.suffix

        def key_for(pk: Any) -> str:
            return render(pk) + suffix()

        def key_of(obj: Any) -> str:
            return render_of(obj) + suffix()

        self._key_for = key_for
        self._key_of = key_of

    def _same_key(self, obj: T, key: str) -> bool:
        """True if ``obj`` belongs under ``key`` (whatever generation ``key`` carries)."""
        if self._generation is None:
            return self._key_of(obj) == key
        return self._keys.render_of(obj) == key.rpartition(SUFFIX)[0]

    def _key_parts(self, key: str | Callable[[Any], str] | None) -> list[KeyPart]:
        spec = self._compiled.spec
        fields = list(spec.key_fields)
        if not fields and isinstance(key, str):
            # No Field(primary_key=True): the template's placeholders are the key.
            _, names = parse_template(self._model, key)
            for name in names:
                if name is None or name == "%d":
                    break
                try:
                    fields.append(spec.field(name))
                except KeyError:
                    raise ModelDefinitionError(
                        f"{self._model.__qualname__}: key template {key!r} names {{{name}}}, "
                        "which is not a stored field",
                        model=self._model,
                    ) from None
        return [
            KeyPart(f.attr, _strip_optional(f) if f.auto else f.annotation, f.hash_tag, f.codec)
            for f in fields
        ]

    # -- introspection ----------------------------------------------------------

    @property
    def model(self) -> type[T]:
        """The dataclass this repository stores."""
        return self._model

    @property
    def backend(self) -> Backend:
        """The backend records are stored in."""
        return self._backend

    @property
    def serializer(self) -> Serializer:
        """The serializer, resolved at construction."""
        return self._serializer

    @property
    def namespace(self) -> str:
        """The namespace of the default key scheme (and of the auto-id counter)."""
        return self._namespace

    @property
    def signals(self) -> RepositorySignals[T]:
        """This repository's write signals: ``repo.signals.pre_save.connect(fn)``.

        Each write method's docstring and the Signals guide say what it sends.
        """
        return self._signals

    @property
    def ttl(self) -> float | None:
        """The default TTL in seconds, or None for no expiry."""
        return self._ttl

    def __repr__(self) -> str:
        return (
            f"Repository({self._model.__qualname__}, backend={type(self._backend).__name__}, "
            f"serializer={self._serializer.name!r}, key={self._keys.describe!r}, "
            f"ttl={self._ttl!r})"
        )

    def close(self) -> None:
        """Close the backend if this repository created it (no ``backend=``); else nothing.

        A backend passed in belongs to the caller, who may share it between
        repositories, so it stays open.
        """
        if self._owns_backend:
            self._backend.close()

    def key_for(self, pk: Any) -> str:
        """The backend key of primary key ``pk`` (a tuple for composite keys).

        Raises:
            ValidationError: ``pk`` has the wrong shape or type.
        """
        return self._key_for(pk)

    def key_of(self, obj: T) -> str:
        """The backend key of a record."""
        return self._key_of(obj)

    def pk_of(self, obj: T) -> Any:
        """The primary-key value of a record (a tuple for composite keys)."""
        return self._keys.pk_of(obj)

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
            raise NotFound(
                f"{self._model.__qualname__} {pk!r} not found (key {key!r})",
                model=self._model,
                key=key,
            )
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
        if not keys:
            return []
        load = self._load
        return [
            None if payload is None else load(key, payload, pk)
            for pk, key, payload in zip(pks, keys, self._backend.get_many(keys), strict=True)
        ]

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
        seconds = self._ttl if ttl is DEFAULT else normalize_ttl(ttl)
        if self._auto is not None and self._needs_id(obj):
            data = self._encode_checked(obj, None)
            if self._signalled:
                return self._signals._create_auto(obj, data, seconds, "create")
            return self._create_auto(obj, data, seconds)
        key, payload = self._dump(obj)
        signals = self._signals if self._signalled else None
        if signals is not None:
            signals._send_pre("pre_create", "create", (obj,), (key,), seconds)
        if not self._backend.add(key, payload, seconds):
            raise AlreadyExists(
                f"{self._model.__qualname__} already exists under key {key!r}",
                model=self._model,
                key=key,
            )
        if signals is not None:
            signals._send_post("post_create", "create", (obj,), (key,), seconds)
        return obj

    def _create_auto(self, obj: T, data: dict[str, Any], seconds: float | None) -> T:
        """Insert ``obj`` under a new id from the counter, skipping ids that are taken."""
        backend = self._backend
        counter = self._counter_key
        step = 1
        new_id = backend.incr(counter, step)
        for _ in range(_ID_ATTEMPTS):
            new, key, payload = self._with_id(obj, data, new_id)
            if backend.add(key, payload, seconds):
                return new
            # Taken: the counter is behind the stored ids. Gallop past them.
            step *= 2
            new_id = backend.incr(counter, step)
        raise AlreadyExists(  # pragma: no cover - needs 2**48 ids taken above the counter
            f"{self._model.__qualname__}: {_ID_ATTEMPTS} auto ids up to {new_id} from counter "
            f"{counter!r} were all taken; nothing was written",
            model=self._model,
            key=counter,
        )

    def save(self, obj: T, *, ttl: TTLArg = DEFAULT) -> T:
        """Store ``obj`` whether or not it exists (upsert) and return it."""
        seconds = self._resolve_ttl(ttl)
        key, payload = self._dump(obj)
        if self._signalled:
            signals = self._signals
            signals._send_pre("pre_save", "save", (obj,), (key,), seconds)
            self._backend.set(key, payload, seconds)
            signals._send_post("post_save", "save", (obj,), (key,), seconds)
            return obj
        self._backend.set(key, payload, seconds)
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
        seconds = self._resolve_update_ttl(ttl)
        key, payload = self._dump(obj)
        signals = self._signals if self._signalled else None
        if signals is not None:
            signals._send_pre("pre_update", "update", (obj,), (key,), seconds)
        if not self._backend.replace(key, payload, seconds):
            raise NotFound(
                f"{self._model.__qualname__} to update not found under key {key!r}",
                model=self._model,
                key=key,
            )
        if signals is not None:
            signals._send_post("post_update", "update", (obj,), (key,), seconds)
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
        seconds = self._resolve_ttl(ttl)
        if self._needs_id(obj):
            if self._signalled:
                data = self._encode_checked(obj, None)
                return self._signals._create_auto(obj, data, seconds, "get_or_create"), True
            return self.create(obj, ttl=ttl), True
        key, payload = self._dump(obj)
        signals = self._signals if self._signalled else None
        for _ in range(_GET_OR_CREATE_ATTEMPTS):
            if signals is not None:
                # Create signals only when it creates: look first, so a stored
                # record is returned without a pre_create.
                existing = self._backend.get(key)
                if existing is not None:
                    return self._load(key, existing, self._pk_get(obj)), False
                signals._send_pre("pre_create", "get_or_create", (obj,), (key,), seconds)
            if self._backend.add(key, payload, seconds):
                if signals is not None:
                    signals._send_post("post_create", "get_or_create", (obj,), (key,), seconds)
                return obj, True
            existing = self._backend.get(key)
            if existing is not None:
                return self._load(key, existing, self._pk_get(obj)), False
            # Deleted or expired between add and get: try to insert again.
        raise AlreadyExists(  # pragma: no cover - needs a delete racing every attempt
            f"{self._model.__qualname__} under key {key!r} kept changing; gave up after "
            f"{_GET_OR_CREATE_ATTEMPTS} attempts",
            model=self._model,
            key=key,
        )

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
        return self._update_with(pk, fn, ttl, attempts, "update_with")

    def _update_with(
        self, pk: Any, fn: Callable[[T], T], ttl: UpdateTTLArg, attempts: int, operation: str
    ) -> T:
        key = self._key_for(pk)
        seconds = self._resolve_update_ttl(ttl)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(f"attempts must be a positive int, not {attempts!r}")
        backend = self._backend
        delays = backoff_delays()
        signals = self._signals if self._signalled else None
        for attempt in range(1, attempts + 1):
            found = backend.gets(key)
            if found is None:
                raise NotFound(
                    f"{self._model.__qualname__} {pk!r} to update not found (key {key!r})",
                    model=self._model,
                    key=key,
                )
            payload, token = found
            new = fn(self._load(key, payload, pk))
            if not isinstance(new, self._model):
                raise self._not_a_record(
                    f"update_with({safe_repr(pk)}, fn): fn",
                    new,
                    key,
                    "return the changed record (dataclasses.replace(record, ...) makes one; "
                    "a function that changes the record in place must still return it)",
                    "nothing was written",
                )
            new_key, new_payload = self._dump(new)
            if new_key != key:
                raise ValidationError(
                    f"{self._model.__qualname__} (key {key!r}): the update function changed "
                    f"the primary key (to key {new_key!r}); nothing was written",
                    model=self._model,
                    key=key,
                )
            if signals is not None:
                signals._send_pre("pre_update", operation, (new,), (key,), seconds, attempt)
            if backend.cas(key, new_payload, token, seconds):
                if signals is not None:
                    signals._send_post("post_update", operation, (new,), (key,), seconds, attempt)
                return new
            _log.debug("update_with of key %r lost a compare-and-set; retrying", key)
            time.sleep(next(delays))
        _log.warning(
            "update_with of a %s record: %d compare-and-set attempts lost to concurrent "
            "writers; gave up (ConflictError)",
            self._model.__qualname__,
            attempts,
        )
        raise ConflictError(
            f"{self._model.__qualname__} (key {key!r}): {attempts} compare-and-set attempts "
            "lost to concurrent writers; nothing was written",
            attempts=attempts,
            model=self._model,
            key=key,
        )

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
        values = {**(changes or {}), **fields}
        init_fields = {f.name for f in dataclasses.fields(self._model) if f.init}  # type: ignore[arg-type]
        for name in values:
            if name in self._key_attrs:
                raise ValidationError(
                    f"{self._model.__qualname__}.{name} is part of the primary key and cannot "
                    "be patched; create a new record and delete the old one",
                    model=self._model,
                    path=name,
                )
            if name not in init_fields:
                raise ValidationError(
                    f"{self._model.__qualname__} has no field {name!r} to patch "
                    f"(fields: {', '.join(sorted(init_fields))})",
                    model=self._model,
                    path=name,
                )
        if not values:
            raise ValidationError(
                f"{self._model.__qualname__}: patch() needs at least one field to set",
                model=self._model,
            )

        def apply(record: T) -> T:
            return dataclasses.replace(record, **values)  # type: ignore[type-var]

        return self._update_with(pk, apply, ttl, UPDATE_ATTEMPTS, "patch")

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
        key = self._key_for(pk)
        seconds = self._resolve_ttl(ttl)
        timeout = _positive("lock_timeout", lock_timeout)
        payload = self._backend.get(key)
        if payload is not None:
            return self._load(key, payload, pk)
        # Callers of this process wait for the one loading, but no longer than
        # lock_timeout: then they load themselves (a loader that hangs holds
        # up only its own caller).
        result: T = self._flights.run(
            key,
            lambda: self._load_through(key, pk, loader, seconds, timeout),
            timeout,
            lambda: self._load_late(key, pk, loader, seconds),
        )
        return result

    def _load_late(self, key: str, pk: Any, loader: Callable[[], T], seconds: float | None) -> T:
        """After waiting ``lock_timeout`` for another load: the cached record, or load here."""
        payload = self._backend.get(key)
        if payload is not None:
            return self._load(key, payload, pk)
        return self._fill(key, pk, loader, seconds)

    def _load_through(
        self, key: str, pk: Any, loader: Callable[[], T], seconds: float | None, timeout: float
    ) -> T:
        backend = self._backend
        lease = Lease(backend, key + LEASE_SUFFIX, timeout)
        delays = backoff_delays(0.002, 0.05)
        # However the lease behaves (a holder that never finishes, a lease
        # key planted without expiry), nobody waits longer than this.
        deadline = time.monotonic() + timeout
        while True:
            taken = lease.acquire()
            if taken is not False:  # True, or unknown: load (at most one extra load)
                try:
                    if taken:
                        payload = backend.get(key)  # cached while we raced for the lease?
                        if payload is not None:
                            return self._load(key, payload, pk)
                    return self._fill(key, pk, loader, seconds)
                finally:
                    lease.release()
            # Another caller is loading: poll for its value, or for its lease to go.
            _log.debug("get_or_load of key %r waits for another caller's load", key)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    _log.warning(
                        "get_or_load of a %s record waited lock_timeout=%gs for another "
                        "caller's load; loading here",
                        self._model.__qualname__,
                        timeout,
                    )
                    return self._fill(key, pk, loader, seconds)
                time.sleep(min(next(delays), left))
                payload, holder = self._poll([key, lease.key], key)
                if payload is not None:
                    return self._load(key, payload, pk)
                if holder is None:
                    break  # it failed (nothing cached) or its lease expired: load here

    def _fill(self, key: str, pk: Any, loader: Callable[[], T], seconds: float | None) -> T:
        """``loader()``, cached if ``key`` is still empty; else what is stored now."""
        obj = loader()
        if not isinstance(obj, self._model):
            raise self._not_a_record(
                f"get_or_load({safe_repr(pk)}, loader): the loader",
                obj,
                key,
                f"return the record with primary key {safe_repr(pk)}",
                "nothing was cached",
            )
        loaded_key, data = self._dump(obj)
        self._check_loaded(key, loaded_key)
        backend = self._backend
        if backend.add(key, data, seconds):
            return obj
        # Someone wrote the key while the loader ran: a real write wins.
        payload = backend.get(key)
        # Deleted again since: do not fill over that delete (it may be an
        # invalidation); the freshly loaded record is returned uncached.
        return obj if payload is None else self._load(key, payload, pk)

    def _poll(self, keys: list[str], key: str) -> list[bytes | None]:
        """``get_many(keys)`` of records and their leases; errors name only ``key``."""
        try:
            return self._backend.get_many(keys)
        except BackendError as exc:
            raise self._store_failed_waiting(key, exc) from exc

    def _store_failed_waiting(self, key: str, exc: BackendError) -> BackendError:
        error = BackendUnavailable if isinstance(exc, BackendUnavailable) else BackendError
        return error(
            f"{self._model.__qualname__} (key {key!r}): the store failed while waiting for "
            f"another caller's load of this record ({type(exc).__name__}); nothing was "
            "written, try again",
            model=self._model,
            key=key,
            server=exc.server,
        )

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
        pks = list(pks)
        keys = [self._key_for(pk) for pk in pks]
        seconds = self._resolve_ttl(ttl)
        timeout = _positive("lock_timeout", lock_timeout)
        if not keys:
            return []
        backend = self._backend
        found: dict[str, T | None] = {}
        missing: dict[str, Any] = {}
        for pk, key, payload in zip(pks, keys, backend.get_many(keys), strict=True):
            if payload is not None:
                found[key] = self._load(key, payload, pk)
            else:
                missing.setdefault(key, pk)
        delays = backoff_delays(0.002, 0.05)
        deadline = time.monotonic() + timeout
        token = new_token()
        while missing:
            waiting = list(missing)
            try:
                taken = backend.add_many([(key + LEASE_SUFFIX, token) for key in waiting], timeout)
                mine = [key for key, ok in zip(waiting, taken, strict=True) if ok]
            except BackendError:
                # Which leases were taken is unknown: load them all here (at
                # most one extra load each) and release the ones that are ours.
                mine = waiting
            if mine:
                try:
                    self._load_many(mine, missing, found, loader, seconds)
                finally:
                    _release_all(backend, [key + LEASE_SUFFIX for key in mine], token)
                for key in mine:
                    del missing[key]
            if not missing:
                break
            # Other callers are loading the rest: poll until their values arrive
            # or their leases go (then the add_many above takes them over).
            waiting = list(missing)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:  # waited long enough: load the rest here
                    self._load_many(waiting, missing, found, loader, seconds)
                    missing.clear()
                    break
                time.sleep(min(next(delays), left))
                polled = self._poll(waiting + [key + LEASE_SUFFIX for key in waiting], waiting[0])
                held = False
                for i, key in enumerate(waiting):
                    payload = polled[i]
                    if payload is not None:
                        found[key] = self._load(key, payload, missing.pop(key))
                    elif polled[len(waiting) + i] is not None:
                        held = True
                waiting = list(missing)
                if not held:
                    break
        return [found.get(key) for key in keys]

    def _load_many(
        self,
        mine: list[str],
        missing: dict[str, Any],
        found: dict[str, T | None],
        loader: Callable[[list[Any]], Iterable[T]],
        seconds: float | None,
    ) -> None:
        """Load and cache the keys this call leased (``mine``) into ``found``."""
        backend = self._backend
        need: list[str] = []
        for key, payload in zip(mine, backend.get_many(mine), strict=True):
            if payload is not None:  # cached while we raced for the lease
                found[key] = self._load(key, payload, missing[key])
            else:
                need.append(key)
        if not need:
            return
        wanted = set(need)
        items: list[tuple[str, bytes]] = []
        loaded: dict[str, T] = {}
        for obj in self._loaded_records(loader([missing[key] for key in need]), need, missing):
            key, data = self._dump(obj)
            if key not in wanted:
                raise ValidationError(
                    f"{self._model.__qualname__}: the get_or_load_many loader returned a record "
                    f"under key {key!r}, which was not asked for; nothing was cached",
                    model=self._model,
                    key=key,
                )
            if key not in loaded:
                items.append((key, data))
            loaded[key] = obj
        for key in need:
            found[key] = loaded.get(key)
        if not items:
            return
        # Insert-if-absent: a key written while the loader ran keeps that write.
        lost = [
            key
            for (key, _), ok in zip(items, backend.add_many(items, seconds), strict=True)
            if not ok
        ]
        if lost:
            for key, payload in zip(lost, backend.get_many(lost), strict=True):
                if payload is not None:  # else deleted again since: keep the loaded one
                    found[key] = self._load(key, payload, missing[key])

    def _loaded_records(self, result: object, need: list[str], missing: dict[str, Any]) -> list[T]:
        """The loader's result as a list of records, or a ValidationError saying what is wrong."""
        name = self._model.__qualname__
        asked = [missing[key] for key in need]
        call = f"get_or_load_many(..., loader): the loader, called with {safe_repr(asked)},"
        fix = f"return an iterable of {name} records, for example [{name}(...), ...]"
        if isinstance(result, (self._model, str, bytes, Mapping)) or not isinstance(
            result, Iterable
        ):
            # Narrowed to include Mapping[Unknown, Unknown]; the message takes any object.
            raise ValidationError(
                f"{name}: {call} returned {type(result).__name__} {safe_repr(result)}; {fix} "  # pyright: ignore[reportUnknownArgumentType]
                "(the keys it did not find left out); nothing was cached",
                model=self._model,
                key=need[0],
                expected=f"iterable of {name}",
                actual=type(result).__name__,  # pyright: ignore[reportUnknownArgumentType]
            )
        records = list(cast("Iterable[object]", result))
        for obj in records:
            if not isinstance(obj, self._model):
                raise ValidationError(
                    f"{name}: {call} returned a {type(obj).__name__} {safe_repr(obj)} among its "
                    f"results; {fix}; nothing was cached",
                    model=self._model,
                    key=need[0],
                    expected=name,
                    actual=type(obj).__name__,
                )
        return cast("list[T]", records)  # each one checked above

    def _check_loaded(self, key: str, loaded_key: str) -> None:
        if loaded_key != key:
            raise ValidationError(
                f"{self._model.__qualname__}: the loader for key {key!r} returned a record "
                f"under key {loaded_key!r}; nothing was cached",
                model=self._model,
                key=key,
            )

    def _not_a_record(
        self, what: str, value: object, key: str, fix: str, outcome: str
    ) -> ValidationError:
        """A ValidationError for a user function that returned a non-record."""
        name = self._model.__qualname__
        return ValidationError(
            f"{name}: {what} returned {type(value).__name__} {safe_repr(value)}, expected a "
            f"{name} record; {fix}; {outcome}",
            model=self._model,
            key=key,
            path="$",
            expected=name,
            actual=type(value).__name__,
        )

    def delete(self, pk: Any) -> bool:
        """Remove the record with primary key ``pk``; True if it existed.

        Signals: ``pre_delete`` and ``post_delete`` (``event.deleted`` 0 or 1)
        are sent whether or not a record was stored.
        """
        key = self._key_for(pk)
        if self._signalled:
            signals = self._signals
            signals._send_delete("pre_delete", "delete", (pk,), (key,), None)
            existed = self._backend.delete(key)
            signals._send_delete("post_delete", "delete", (pk,), (key,), int(existed))
            return existed
        return self._backend.delete(key)

    def delete_many(self, pks: Iterable[Any]) -> int:
        """Remove the records for ``pks`` in one backend call; how many existed."""
        pks = list(pks)
        keys = [self._key_for(pk) for pk in pks]
        if not keys:
            return 0
        if self._signalled:
            signals = self._signals
            signals._send_delete("pre_delete", "delete_many", pks, keys, None)
            deleted = self._backend.delete_many(keys)
            signals._send_delete("post_delete", "delete_many", pks, keys, deleted)
            return deleted
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
        seconds = self._resolve_ttl(ttl)
        objs = list(objs)
        if not objs:
            return []
        pending = [i for i, obj in enumerate(objs) if self._needs_id(obj)]
        encoded = {i: self._encode_checked(objs[i], None) for i in pending}
        items = [self._dump(obj) if i not in encoded else ("", b"") for i, obj in enumerate(objs)]
        signals = self._signals if self._signalled else None
        if signals is not None:  # before the counter's incr: a veto leaves no trace
            keys = [key or None for key, _ in items]
            signals._send_pre("pre_create", "create_many", objs, keys, seconds)
        gap = 0
        results: list[bool] = []  # set by the first round (gap == 0)
        for _ in range(_ID_ATTEMPTS):  # pragma: no branch - ends when no auto id is refused
            if pending:
                # Skip `gap` ids past the counter: 0 at first, then 1, 2, 4, ...
                last = self._backend.incr(self._counter_key, len(pending) + gap)
                for offset, i in enumerate(pending):
                    new_id = last - len(pending) + 1 + offset
                    obj, key, payload = self._with_id(objs[i], encoded[i], new_id)
                    objs[i] = obj
                    items[i] = (key, payload)
            if gap == 0:
                # Explicit ids first: one that an auto id of this batch would
                # take wins, and the auto one moves on.
                order = [i for i in range(len(items)) if i not in encoded] + pending
                added = self._backend.add_many([items[i] for i in order], seconds)
                results = [False] * len(items)
                for i, ok in zip(order, added, strict=True):
                    results[i] = ok
            else:
                retried = self._backend.add_many([items[i] for i in pending], seconds)
                for i, ok in zip(pending, retried, strict=True):
                    results[i] = ok
            # Auto ids that were taken: the counter was behind; gallop past them.
            pending = [i for i in pending if not results[i]]
            if not pending:
                break
            gap = gap * 2 or 1
        self._finish_batch(
            signals,
            "create_many",
            objs,
            items,
            results,
            seconds,
            (AlreadyExists, "already existed", "created"),
        )
        return objs

    def save_many(self, objs: Iterable[T], *, ttl: TTLArg = DEFAULT) -> list[T]:
        """Store every record (upsert) in one backend call."""
        seconds = self._resolve_ttl(ttl)
        objs = list(objs)
        items = [self._dump(obj) for obj in objs]
        if items:
            if self._signalled:
                keys = [key for key, _ in items]
                self._signals._send_pre("pre_save", "save_many", objs, keys, seconds)
                self._backend.set_many(items, seconds)
                self._signals._send_post("post_save", "save_many", objs, keys, seconds)
                return objs
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
        seconds = self._resolve_update_ttl(ttl)
        objs = list(objs)
        items = [self._dump(obj) for obj in objs]
        if not items:
            return objs
        signals = self._signals if self._signalled else None
        if signals is not None:
            keys = [key for key, _ in items]
            signals._send_pre("pre_update", "update_many", objs, keys, seconds)
        results = self._backend.replace_many(items, seconds)
        self._finish_batch(
            signals,
            "update_many",
            objs,
            items,
            results,
            seconds,
            (NotFound, "to update were not found", "updated"),
        )
        return objs

    def _finish_batch(
        self,
        signals: RepositorySignals[T] | None,
        operation: str,
        objs: list[T],
        items: list[tuple[str, bytes]],
        results: list[bool],
        seconds: BackendTTL,
        refusal: tuple[type[AlreadyExists | NotFound], str, str],
    ) -> None:
        """Send the batch's post signal for the records written, then raise any refusal."""
        error, why, done = refusal
        if signals is not None:
            written = [i for i, ok in enumerate(results) if ok]
            signals._send_post_batch(
                "post_create" if operation == "create_many" else "post_update",
                operation,
                [objs[i] for i in written],
                [items[i][0] for i in written],
                seconds,
                lambda: self._raise_refused(items, results, error, why, done),
            )
        self._raise_refused(items, results, error, why, done)

    def _raise_refused(
        self,
        items: list[tuple[str, bytes]],
        results: list[bool],
        error: type[AlreadyExists | NotFound],
        why: str,
        done: str,
    ) -> None:
        """Raise ``error`` listing the keys a batch write refused, if any."""
        refused = [key for (key, _), ok in zip(items, results, strict=True) if not ok]
        if refused:
            raise error(
                f"{self._model.__qualname__}: {len(refused)} of {len(items)} records {why} "
                f"and were not written: {describe_keys(refused)}; the other "
                f"{len(items) - len(refused)} were {done}",
                model=self._model,
                key=refused[0],
                keys=refused,
            )

    # -- encoding -----------------------------------------------------------------

    def _resolve_ttl(self, ttl: TTLArg) -> float | None:
        return self._ttl if ttl is DEFAULT else normalize_ttl(ttl)

    def _resolve_update_ttl(self, ttl: UpdateTTLArg) -> BackendTTL:
        """An update's TTL for the backend: KEEP_TTL passes through."""
        if ttl is KEEP_TTL:
            return KEEP_TTL
        return self._ttl if ttl is DEFAULT else normalize_ttl(ttl)

    def _needs_id(self, obj: T) -> bool:
        return self._auto is not None and getattr(obj, self._auto.attr, 0) is None

    def _with_id(self, obj: T, data: dict[str, Any], new_id: int) -> tuple[T, str, bytes]:
        assert self._auto is not None
        new: T = _replace(obj, **{self._auto.attr: new_id})
        data[self._auto.stored] = new_id
        key = self._key_of(new)
        return new, key, self._serialize(key, data)

    def _dump(self, obj: T) -> tuple[str, bytes]:
        """Key and payload of ``obj``; raises before any I/O if it is invalid."""
        if not isinstance(obj, self._model):
            name = self._model.__qualname__
            raise ValidationError(
                f"{name} repository got {type(obj).__qualname__} {safe_repr(obj)}, expected a "
                f"{name} record; pass an instance of {name}, or use a Repository of "
                f"{type(obj).__qualname__} for those",
                model=self._model,
                path="$",
                expected=self._model.__qualname__,
                actual=type(obj).__qualname__,
            )
        try:
            key = self._key_of(obj)
        except ValidationError:
            self._encode_checked(obj, None)  # a clearer message when the record is wrong
            raise
        # _encode_checked and _serialize, inlined: this is every write's hot path.
        try:
            data = self._encode(obj)
        except Exception as exc:
            raise self._invalid(self._compiled.explain_encode(obj), key, exc) from None
        try:
            return key, self._dumps(data)
        except Exception as exc:
            raise self._unserializable(key, exc) from exc

    def _encode_checked(self, obj: T, key: str | None) -> dict[str, Any]:
        try:
            return self._encode(obj)
        except Exception as exc:
            failure = self._compiled.explain_encode(obj)
            raise self._invalid(failure, key, exc) from None

    def _invalid(self, failure: Failure | None, key: str | None, exc: Exception) -> ValidationError:
        name = self._model.__qualname__
        if failure is None:  # pragma: no cover - the explain pass re-raises what failed
            return ValidationError(f"{name}: invalid record ({exc!r})", model=self._model, key=key)
        where = f" (key {key!r})" if key is not None else ""
        return ValidationError(
            f"{name}{where}: {failure.describe()}",
            model=self._model,
            key=key,
            path=failure.path,
            expected=failure.expected,
            actual=failure.actual,
        )

    def _serialize(self, key: str, data: dict[str, Any]) -> bytes:
        try:
            return self._dumps(data)
        except Exception as exc:
            raise self._unserializable(key, exc) from exc

    def _unserializable(self, key: str, exc: Exception) -> SerializationError:
        return SerializationError(
            f"{self._model.__qualname__} (key {key!r}): serializer "
            f"{self._serializer.name!r} could not write the record: {exc}",
            model=self._model,
            key=key,
            serializer=self._serializer.name,
        )

    def _load(self, key: str, payload: bytes, pk: Any) -> T:
        """The record stored as ``payload`` under ``key``, which must carry primary key ``pk``."""
        obj = self._decode_payload(key, payload)
        # A value copied under another key decodes fine: compare its key
        # fields with the ones asked for (cheap), the keys only when needed.
        if self._pk_get(obj) != pk or (self._render_check and not self._same_key(obj, key)):
            raise self._misplaced(key, obj)
        return obj

    def _load_by_key(self, key: str, payload: bytes) -> T:
        """:meth:`_load` where only the key is known (a scan): compare the rendered key."""
        obj = self._decode_payload(key, payload)
        if not self._same_key(obj, key):
            raise self._misplaced(key, obj)
        return obj

    def _decode_payload(self, key: str, payload: bytes) -> T:
        """The record ``payload`` decodes to (the fast codec path replaces this)."""
        try:
            return self._decode(self._serializer.loads(payload))
        except Exception as exc:
            raise self._undecodable(key, payload, exc) from exc

    def _misplaced(self, key: str, obj: T) -> DeserializationError:
        try:
            belongs = f"key {self._key_of(obj)!r}"
        except Exception:  # pragma: no cover - a decoded record always renders
            belongs = "another key"
        return DeserializationError(
            f"{self._model.__qualname__} (key {key!r}, serializer {self._serializer.name!r}): "
            f"the stored record has primary key {safe_repr(self._pk_get(obj))}, which belongs "
            f"under {belongs}: it was copied or written under the wrong key; refused",
            model=self._model,
            key=key,
            serializer=self._serializer.name,
        )

    def _undecodable(self, key: str, payload: bytes, exc: Exception) -> DeserializationError:
        name = self._model.__qualname__
        serializer = self._serializer.name
        try:
            data = self._serializer.loads(payload)
        except Exception as load_exc:
            return DeserializationError(
                f"{name} (key {key!r}): stored bytes are not valid {serializer}: {load_exc}",
                model=self._model,
                key=key,
                serializer=serializer,
            )
        failure = self._compiled.explain_decode(data)
        detail = failure.describe() if failure is not None else repr(exc)
        return DeserializationError(
            f"{name} (key {key!r}, serializer {serializer!r}): stored record does not fit the "
            f"model {detail}",
            model=self._model,
            key=key,
            serializer=serializer,
            path=None if failure is None else failure.path,
        )

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

        return _keyspace.touch(self, pk, self._resolve_ttl(ttl))

    def touch_many(self, pks: Iterable[Any], *, ttl: TTLArg = DEFAULT) -> list[bool]:
        """:meth:`touch` for each primary key, in one backend call; which were found, in order."""
        from cacheorm import _keyspace

        return _keyspace.touch_many(self, list(pks), self._resolve_ttl(ttl))

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

        return _keyspace.ttl_of(self, pk)

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

        return _keyspace.clear(self, batch)

    def count(self, *, batch: int = 500) -> int:
        """How many records this repository holds, by a key scan (no values are read).

        Raises:
            ConfigurationError: as :meth:`clear`.
        """
        from cacheorm import _keyspace

        return _keyspace.count(self, batch)

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

        return _keyspace.scan(self, batch, errors)

    # -- schema versions and serializer changes (cacheorm._versions, cacheorm._migrate) ----

    def _evolve(
        self,
        version: int | None,
        upgrades: Mapping[int, Upgrade] | None,
        newer: str,
        read_also: Sequence[str | Serializer],
        rewrite_on_read: bool,
        registry_: SerializerRegistry | None,
    ) -> None:
        """Read older versions and earlier serializers (instead of the plain reader)."""
        evolution: Evolution[T] = Evolution(
            self,
            version=version,
            upgrades=upgrades,
            newer=newer,
            read_also=read_also,
            rewrite_on_read=rewrite_on_read,
            resolve=lambda s: _resolve_serializer(s, registry_),
        )
        self._evolution = evolution
        if version is not None and version > 1:
            # The version goes into the encoded dict, which the direct writer never builds.
            self._encode = evolution.stamp(self._compiled.encode)
        self._decode_payload = evolution.reader()  # type: ignore[method-assign,assignment]
        if rewrite_on_read:  # else the plain _load, which calls the reader above
            self._load = evolution.load  # type: ignore[method-assign]

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

        return migrate(self, batch, progress)


def _not_a_model_class(model: object) -> ModelDefinitionError:
    """The error for ``Repository(x)`` where ``x`` is not a class."""
    kind = type(model).__qualname__
    if dataclasses.is_dataclass(model):
        return ModelDefinitionError(
            f"Repository() takes the model class, not an instance: got a {kind} instance "
            f"{safe_repr(model)}; write Repository({kind}, ...)"
        )
    return ModelDefinitionError(
        f"Repository() takes a dataclass class as its model, got {kind} {safe_repr(model)}; "
        "write Repository(MyModel, ...) with MyModel a @dataclasses.dataclass"
    )


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


def _claim_default_namespace(model: type, prefix: str, namespace: str) -> None:
    """Refuse a default namespace that a class of another name already uses here.

    The default stays the lower-cased class name, so records stored by earlier
    versions and by other processes keep their keys; only names that differ
    but fold to one namespace (``URL`` and ``Url``) are refused. Classes of the
    same name (one class redefined, or two repositories of it) share it.
    """
    with _DEFAULT_NAMESPACES_LOCK:
        other = _DEFAULT_NAMESPACES.setdefault((prefix, namespace), model.__name__)
    if other != model.__name__:
        raise ModelDefinitionError(
            f"{model.__qualname__}: the default namespace {namespace!r} is already used by "
            f"class {other} in this process, so their records would share keys; pass "
            f"namespace= to tell them apart, for example Repository({model.__name__}, "
            f"namespace={model.__name__!r})",
            model=model,
        )


def _renders_unlike_equal(annotation: Any) -> bool:
    """True if equal values of this key annotation can render to different keys."""
    annotation = unwrap_annotation(annotation)
    return annotation is _dt.datetime or get_origin(annotation) is typing.Literal


def _positive(name: str, value: object) -> float:
    """``value`` as a positive finite number of seconds, or ConfigurationError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _release_all(backend: Backend, lease_keys: list[str], token: bytes) -> None:
    """Delete the leases in ``lease_keys`` that still hold ``token`` (best effort)."""
    try:
        held = backend.get_many(lease_keys)
        ours = [key for key, value in zip(lease_keys, held, strict=True) if value == token]
        if ours:
            backend.delete_many(ours)
    except BackendError:
        pass  # they expire on their own


def _strip_optional(field: FieldSpec) -> Any:
    tp = field.annotation
    if get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in get_args(tp) if a is not type(None))
    return tp


def _resolve_serializer(
    serializer: str | Serializer, registry_: SerializerRegistry | None
) -> Serializer:
    if isinstance(serializer, str):
        return (registry_ if registry_ is not None else registry).get(serializer)
    if isinstance(serializer, Serializer) and not isinstance(serializer, type):
        return serializer
    raise ConfigurationError(
        f"serializer must be a registry name or an object with name, binary, dumps() and "
        f"loads(), not {serializer!r}"
    )


#: The referenced model of :meth:`Repository.load_related` (see cacheorm._refs).
U = TypeVar("U")
