"""The shared core of ``Repository`` and ``AsyncRepository``: everything but the I/O.

``RepositoryCore`` holds what a repository is (model, compiled codec,
serializer, key scheme, TTL, signals, schema evolution) and every piece of an
operation's logic that does no I/O: validation, keys, encode/decode, error
messages, and the multi-step operations themselves -- an auto-id ``create``,
``get_or_create``, the compare-and-set loop of ``update_with``, the lease
protocol of ``get_or_load``, batch writes and their signals -- written once as
generators of backend requests (:mod:`cacheorm._ops`).

``Repository`` (``_repository.py``) runs them with :func:`~cacheorm._ops.drive`
on a sync backend; ``AsyncRepository`` (``_async_repository.py``) with
:func:`~cacheorm._ops.adrive` on an async one. Single-call operations (``get``,
``save``, ...) are two or three lines on each side: a key or payload from
here, one backend call, a result or error from here.
"""

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
from typing import Any, Generic, TypedDict, TypeVar, cast, get_args, get_origin

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
from cacheorm._flight import LEASE_SUFFIX, Lease, backoff_delays, new_token
from cacheorm._generation import SUFFIX, Generation
from cacheorm._keys import KeyPart, KeyScheme, parse_template
from cacheorm._keys import _unwrap as unwrap_annotation  # pyright: ignore[reportPrivateUsage]
from cacheorm._observe import Hook, get_logger, instrument
from cacheorm._ops import Call, Cleanup, Flight, Op, Sleep, settle
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
from cacheorm._versions import Evolution, Upgrade

_log = get_logger("repository")

__all__ = ["RepositoryCore", "RepositoryOptions", "registry"]

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


class RepositoryOptions(TypedDict, total=False):
    """The keyword arguments of ``Repository`` and ``AsyncRepository`` besides ``backend``.

    Documented on :class:`~cacheorm.Repository`; the defaults are those of
    :class:`RepositoryCore`.
    """

    serializer: str | Serializer
    key: str | Callable[[Any], str] | None
    namespace: str | None
    prefix: str
    ttl: TTL
    registry: SerializerRegistry | None
    allow_subclasses: bool
    hooks: Sequence[Hook]
    version: int | None
    upgrades: Mapping[int, Upgrade] | None
    newer: typing.Literal["error", "ignore"]
    read_also: Sequence[str | Serializer]
    rewrite_on_read: bool
    generations: bool
    generation_ttl: float


class RepositoryCore(Generic[T]):
    """What ``Repository`` and ``AsyncRepository`` share; see :class:`~cacheorm.Repository`.

    Not used directly: the two subclasses pick the backend (sync or async) and
    run the operations defined here with their driver.
    """

    #: True for AsyncRepository: it awaits what user functions return.
    _awaits = False

    def _default_backend(self) -> Any:
        """The private backend of a repository built without ``backend=``."""
        raise NotImplementedError

    def _refuse_backend(self, model: type, backend: object) -> ConfigurationError | None:
        """The error for a ``backend=`` of the wrong kind, or None if it fits."""
        raise NotImplementedError

    def __init__(
        self,
        model: type[T],
        backend: Any,
        *,
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
        refused = None if backend is None else self._refuse_backend(model, backend)
        if refused is not None:
            raise refused
        store = self._default_backend() if backend is None else backend
        if not isinstance(allow_subclasses, bool):
            raise ConfigurationError(f"allow_subclasses must be a bool, not {allow_subclasses!r}")
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
        self._backend: Any = store
        #: A backend passed in belongs to the caller; one built here is closed with the repository.
        self._owns_backend = backend is None
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
        auto = compiled.spec.auto_field
        self._auto: FieldSpec | None = auto
        self._counter_key = f"{prefix}{namespace}:__seq__"
        # True while any signal receiver concerns this repository (kept by
        # RepositorySignals): a write checks it once, and nothing more if false.
        self._signalled = False
        self._signals: RepositorySignals[T] = RepositorySignals(cast(Any, self))
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
        key = f"{self._prefix}{self._namespace}:__gen__"
        generation = Generation(self._backend, key, seconds, awaits=self._awaits)
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
            f"{type(self).__name__}({self._model.__qualname__}, "
            f"backend={type(self._backend).__name__}, "
            f"serializer={self._serializer.name!r}, key={self._keys.describe!r}, "
            f"ttl={self._ttl!r})"
        )

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

    def _rewrite_stale(self, op: Op[Any]) -> None:
        """``rewrite_on_read``: run the rewrite operation of a stale record (each driver's way)."""
        raise NotImplementedError

    # -- errors every driver raises ------------------------------------------------------

    def _not_found(self, pk: Any, key: str) -> NotFound:
        return NotFound(
            f"{self._model.__qualname__} {pk!r} not found (key {key!r})",
            model=self._model,
            key=key,
        )

    def _taken(self, key: str) -> AlreadyExists:
        return AlreadyExists(
            f"{self._model.__qualname__} already exists under key {key!r}",
            model=self._model,
            key=key,
        )

    def _not_to_update(self, key: str) -> NotFound:
        return NotFound(
            f"{self._model.__qualname__} to update not found under key {key!r}",
            model=self._model,
            key=key,
        )

    def _loaded(
        self, pks: list[Any], keys: list[str], payloads: list[bytes | None]
    ) -> list[T | None]:
        """The records of a ``get_many``: decoded and checked, None where missing."""
        load = self._load
        return [
            None if payload is None else load(key, payload, pk)
            for pk, key, payload in zip(pks, keys, payloads, strict=True)
        ]

    # -- operations (cacheorm._ops): written once, driven sync or async ------------------
    #
    # Each yields Call(...) for the backend, Sleep(...) for a back-off, Await(...)
    # for a user function's awaitable and Flight(...) for the single-flight; it
    # never does I/O itself. The drivers catch nothing: exceptions are thrown in
    # where the backend call was, and propagate from here.

    def _op_create(self, obj: T, ttl: TTLArg) -> Op[T]:
        """``create``: insert if the key is free (an auto id from the counter if needed)."""
        seconds = self._ttl if ttl is DEFAULT else normalize_ttl(ttl)
        if self._auto is not None and self._needs_id(obj):
            data = self._encode_checked(obj, None)
            return (yield from self._op_create_auto(obj, data, seconds, "create"))
        key, payload = self._dump(obj)
        signals = self._signals if self._signalled else None
        if signals is not None:
            yield from signals._send_pre("pre_create", "create", (obj,), (key,), seconds)
        if not (yield Call("add", (key, payload, seconds))):
            raise self._taken(key)
        if signals is not None:
            yield from signals._send_post("post_create", "create", (obj,), (key,), seconds)
        return obj

    def _op_create_auto(
        self, obj: T, data: dict[str, Any], seconds: float | None, operation: str
    ) -> Op[T]:
        """Insert ``obj`` under a new id from the counter, skipping ids that are taken.

        Signals: ``pre_create`` sees the id None, ``post_create`` the new id.
        """
        signals = self._signals if self._signalled else None
        if signals is not None:
            yield from signals._send_pre("pre_create", operation, (obj,), (None,), seconds)
        counter = self._counter_key
        step = 1
        new_id: int = yield Call("incr", (counter, step))
        for _ in range(_ID_ATTEMPTS):
            new, key, payload = self._with_id(obj, data, new_id)
            if (yield Call("add", (key, payload, seconds))):
                if signals is not None:
                    yield from signals._send_post("post_create", operation, (new,), (key,), seconds)
                return new
            # Taken: the counter is behind the stored ids. Gallop past them.
            step *= 2
            new_id = yield Call("incr", (counter, step))
        raise AlreadyExists(  # pragma: no cover - needs 2**48 ids taken above the counter
            f"{self._model.__qualname__}: {_ID_ATTEMPTS} auto ids up to {new_id} from counter "
            f"{counter!r} were all taken; nothing was written",
            model=self._model,
            key=counter,
        )

    def _op_save(self, obj: T, ttl: TTLArg) -> Op[T]:
        """``save`` with its signals (the drivers store unsignalled records directly)."""
        seconds = self._resolve_ttl(ttl)
        key, payload = self._dump(obj)
        signals = self._signals
        yield from signals._send_pre("pre_save", "save", (obj,), (key,), seconds)
        yield Call("set", (key, payload, seconds))
        yield from signals._send_post("post_save", "save", (obj,), (key,), seconds)
        return obj

    def _op_update(self, obj: T, ttl: UpdateTTLArg) -> Op[T]:
        """``update`` with its signals."""
        seconds = self._resolve_update_ttl(ttl)
        key, payload = self._dump(obj)
        signals = self._signals
        yield from signals._send_pre("pre_update", "update", (obj,), (key,), seconds)
        if not (yield Call("replace", (key, payload, seconds))):
            raise self._not_to_update(key)
        yield from signals._send_post("post_update", "update", (obj,), (key,), seconds)
        return obj

    def _op_delete(self, pk: Any) -> Op[bool]:
        """``delete`` with its signals."""
        key = self._key_for(pk)
        signals = self._signals
        yield from signals._send_delete("pre_delete", "delete", (pk,), (key,), None)
        existed: bool = yield Call("delete", (key,))
        yield from signals._send_delete("post_delete", "delete", (pk,), (key,), int(existed))
        return existed

    def _op_delete_many(self, pks: list[Any], keys: list[str]) -> Op[int]:
        """``delete_many`` with its signals."""
        signals = self._signals
        yield from signals._send_delete("pre_delete", "delete_many", pks, keys, None)
        deleted: int = yield Call("delete_many", (keys,))
        yield from signals._send_delete("post_delete", "delete_many", pks, keys, deleted)
        return deleted

    def _op_get_or_create(self, obj: T, ttl: TTLArg) -> Op[tuple[T, bool]]:
        seconds = self._resolve_ttl(ttl)
        if self._needs_id(obj):
            data = self._encode_checked(obj, None)
            return (yield from self._op_create_auto(obj, data, seconds, "get_or_create")), True
        key, payload = self._dump(obj)
        signals = self._signals if self._signalled else None
        for _ in range(_GET_OR_CREATE_ATTEMPTS):
            if signals is not None:
                # Create signals only when it creates: look first, so a stored
                # record is returned without a pre_create.
                existing = yield Call("get", (key,))
                if existing is not None:
                    return self._load(key, existing, self._pk_get(obj)), False
                yield from signals._send_pre("pre_create", "get_or_create", (obj,), (key,), seconds)
            if (yield Call("add", (key, payload, seconds))):
                if signals is not None:
                    yield from signals._send_post(
                        "post_create", "get_or_create", (obj,), (key,), seconds
                    )
                return obj, True
            existing = yield Call("get", (key,))
            if existing is not None:
                return self._load(key, existing, self._pk_get(obj)), False
            # Deleted or expired between add and get: try to insert again.
        raise AlreadyExists(  # pragma: no cover - needs a delete racing every attempt
            f"{self._model.__qualname__} under key {key!r} kept changing; gave up after "
            f"{_GET_OR_CREATE_ATTEMPTS} attempts",
            model=self._model,
            key=key,
        )

    def _op_update_with(
        self,
        pk: Any,
        fn: Callable[[T], Any],
        ttl: UpdateTTLArg,
        attempts: int,
        operation: str,
    ) -> Op[T]:
        key = self._key_for(pk)
        seconds = self._resolve_update_ttl(ttl)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(f"attempts must be a positive int, not {attempts!r}")
        delays = backoff_delays()
        signals = self._signals if self._signalled else None
        for attempt in range(1, attempts + 1):
            found = yield Call("gets", (key,))
            if found is None:
                raise NotFound(
                    f"{self._model.__qualname__} {pk!r} to update not found (key {key!r})",
                    model=self._model,
                    key=key,
                )
            payload, token = found
            new = yield from settle(
                fn(self._load(key, payload, pk)),
                f"{self._model.__qualname__}: the update_with function {_name(fn)} returned "
                "an awaitable: async update functions need AsyncRepository; pass a plain "
                "function to Repository.update_with",
            )
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
                yield from signals._send_pre(
                    "pre_update", operation, (new,), (key,), seconds, attempt
                )
            if (yield Call("cas", (key, new_payload, token, seconds))):
                if signals is not None:
                    yield from signals._send_post(
                        "post_update", operation, (new,), (key,), seconds, attempt
                    )
                return new
            _log.debug("update_with of key %r lost a compare-and-set; retrying", key)
            yield Sleep(next(delays))
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

    def _patcher(
        self, changes: Mapping[str, Any] | None, fields: dict[str, Any]
    ) -> Callable[[T], T]:
        """The update function of ``patch``, after checking the fields it sets."""
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

        return apply

    # -- read-through -------------------------------------------------------------------

    def _op_get_or_load(
        self, pk: Any, loader: Callable[[], Any], ttl: TTLArg, lock_timeout: float
    ) -> Op[T]:
        key = self._key_for(pk)
        seconds = self._resolve_ttl(ttl)
        timeout = _positive("lock_timeout", lock_timeout)
        payload = yield Call("get", (key,))
        if payload is not None:
            return self._load(key, payload, pk)
        # Callers of this process wait for the one loading, but no longer than
        # lock_timeout: then they load themselves (a loader that hangs holds
        # up only its own caller).
        result: T = yield Flight(
            key,
            lambda: self._load_through(key, pk, loader, seconds, timeout),
            timeout,
            lambda: self._load_late(key, pk, loader, seconds),
        )
        return result

    def _load_late(
        self, key: str, pk: Any, loader: Callable[[], Any], seconds: float | None
    ) -> Op[T]:
        """After waiting ``lock_timeout`` for another load: the cached record, or load here."""
        payload = yield Call("get", (key,))
        if payload is not None:
            return self._load(key, payload, pk)
        return (yield from self._fill(key, pk, loader, seconds))

    def _load_through(
        self, key: str, pk: Any, loader: Callable[[], Any], seconds: float | None, timeout: float
    ) -> Op[T]:
        lease = Lease(key + LEASE_SUFFIX, timeout)
        delays = backoff_delays(0.002, 0.05)
        # However the lease behaves (a holder that never finishes, a lease
        # key planted without expiry), nobody waits longer than this.
        deadline = time.monotonic() + timeout
        while True:
            taken = yield from lease.acquire()
            if taken is not False:  # True, or unknown: load (at most one extra load)
                try:
                    if taken:
                        payload = yield Call("get", (key,))  # cached while we raced for the lease?
                        if payload is not None:
                            return self._load(key, payload, pk)
                    return (yield from self._fill(key, pk, loader, seconds))
                finally:
                    yield from lease.release()
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
                    return (yield from self._fill(key, pk, loader, seconds))
                yield Sleep(min(next(delays), left))
                payload, holder = yield from self._poll([key, lease.key], key)
                if payload is not None:
                    return self._load(key, payload, pk)
                if holder is None:
                    break  # it failed (nothing cached) or its lease expired: load here

    def _fill(self, key: str, pk: Any, loader: Callable[[], Any], seconds: float | None) -> Op[T]:
        """``loader()``, cached if ``key`` is still empty; else what is stored now."""
        obj = yield from settle(
            loader(),
            f"{self._model.__qualname__}: the get_or_load loader {_name(loader)} returned an "
            "awaitable: async loaders need AsyncRepository; pass a plain function to "
            "Repository.get_or_load",
        )
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
        if (yield Call("add", (key, data, seconds))):
            return obj
        # Someone wrote the key while the loader ran: a real write wins.
        payload = yield Call("get", (key,))
        # Deleted again since: do not fill over that delete (it may be an
        # invalidation); the freshly loaded record is returned uncached.
        return obj if payload is None else self._load(key, payload, pk)

    def _poll(self, keys: list[str], key: str) -> Op[list[bytes | None]]:
        """``get_many(keys)`` of records and their leases; errors name only ``key``."""
        try:
            found: list[bytes | None] = yield Call("get_many", (keys,))
        except BackendError as exc:
            raise self._store_failed_waiting(key, exc) from exc
        return found

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

    def _op_get_or_load_many(
        self,
        pks: Iterable[Any],
        loader: Callable[[list[Any]], Any],
        ttl: TTLArg,
        lock_timeout: float,
    ) -> Op[list[T | None]]:
        pks = list(pks)
        keys = [self._key_for(pk) for pk in pks]
        seconds = self._resolve_ttl(ttl)
        timeout = _positive("lock_timeout", lock_timeout)
        if not keys:
            return []
        found: dict[str, T | None] = {}
        missing: dict[str, Any] = {}
        payloads = yield Call("get_many", (keys,))
        for pk, key, payload in zip(pks, keys, payloads, strict=True):
            if payload is not None:
                found[key] = self._load(key, payload, pk)
            else:
                missing.setdefault(key, pk)
        delays = backoff_delays(0.002, 0.05)
        deadline = time.monotonic() + timeout
        token = new_token()
        while missing:
            waiting = list(missing)
            leases = [key + LEASE_SUFFIX for key in waiting]
            try:
                taken = yield Call("add_many", ([(lease, token) for lease in leases], timeout))
                mine = [key for key, ok in zip(waiting, taken, strict=True) if ok]
            except BackendError:
                # Which leases were taken is unknown: load them all here (at
                # most one extra load each) and release the ones that are ours.
                mine = waiting
            except BaseException:  # interrupted (cancelled): free any lease it took
                yield from _release_all(leases, token)
                raise
            if mine:
                try:
                    yield from self._load_many(mine, missing, found, loader, seconds)
                finally:
                    yield from _release_all([key + LEASE_SUFFIX for key in mine], token)
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
                    yield from self._load_many(waiting, missing, found, loader, seconds)
                    missing.clear()
                    break
                yield Sleep(min(next(delays), left))
                polled = yield from self._poll(
                    waiting + [key + LEASE_SUFFIX for key in waiting], waiting[0]
                )
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
        loader: Callable[[list[Any]], Any],
        seconds: float | None,
    ) -> Op[None]:
        """Load and cache the keys this call leased (``mine``) into ``found``."""
        need: list[str] = []
        payloads = yield Call("get_many", (mine,))
        for key, payload in zip(mine, payloads, strict=True):
            if payload is not None:  # cached while we raced for the lease
                found[key] = self._load(key, payload, missing[key])
            else:
                need.append(key)
        if not need:
            return
        wanted = set(need)
        items: list[tuple[str, bytes]] = []
        loaded: dict[str, T] = {}
        result = yield from settle(
            loader([missing[key] for key in need]),
            f"{self._model.__qualname__}: the get_or_load_many loader {_name(loader)} returned "
            "an awaitable: async loaders need AsyncRepository; pass a plain function to "
            "Repository.get_or_load_many",
        )
        for obj in self._loaded_records(result, need, missing):
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
        added = yield Call("add_many", (items, seconds))
        lost = [key for (key, _), ok in zip(items, added, strict=True) if not ok]
        if lost:
            payloads = yield Call("get_many", (lost,))
            for key, payload in zip(lost, payloads, strict=True):
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

    # -- batch writes -------------------------------------------------------------

    def _op_create_many(self, objs: Iterable[T], ttl: TTLArg) -> Op[list[T]]:
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
            yield from signals._send_pre("pre_create", "create_many", objs, keys, seconds)
        gap = 0
        results: list[bool] = []  # set by the first round (gap == 0)
        for _ in range(_ID_ATTEMPTS):  # pragma: no branch - ends when no auto id is refused
            if pending:
                # Skip `gap` ids past the counter: 0 at first, then 1, 2, 4, ...
                last = yield Call("incr", (self._counter_key, len(pending) + gap))
                for offset, i in enumerate(pending):
                    new_id = last - len(pending) + 1 + offset
                    obj, key, payload = self._with_id(objs[i], encoded[i], new_id)
                    objs[i] = obj
                    items[i] = (key, payload)
            if gap == 0:
                # Explicit ids first: one that an auto id of this batch would
                # take wins, and the auto one moves on.
                order = [i for i in range(len(items)) if i not in encoded] + pending
                added = yield Call("add_many", ([items[i] for i in order], seconds))
                results = [False] * len(items)
                for i, ok in zip(order, added, strict=True):
                    results[i] = ok
            else:
                retried = yield Call("add_many", ([items[i] for i in pending], seconds))
                for i, ok in zip(pending, retried, strict=True):
                    results[i] = ok
            # Auto ids that were taken: the counter was behind; gallop past them.
            pending = [i for i in pending if not results[i]]
            if not pending:
                break
            gap = gap * 2 or 1
        yield from self._finish_batch(
            signals,
            "create_many",
            objs,
            items,
            results,
            seconds,
            (AlreadyExists, "already existed", "created"),
        )
        return objs

    def _op_save_many(
        self, objs: list[T], items: list[tuple[str, bytes]], seconds: float | None
    ) -> Op[list[T]]:
        """``save_many`` with its signals."""
        keys = [key for key, _ in items]
        yield from self._signals._send_pre("pre_save", "save_many", objs, keys, seconds)
        yield Call("set_many", (items, seconds))
        yield from self._signals._send_post("post_save", "save_many", objs, keys, seconds)
        return objs

    def _op_update_many(self, objs: Iterable[T], ttl: UpdateTTLArg) -> Op[list[T]]:
        seconds = self._resolve_update_ttl(ttl)
        objs = list(objs)
        items = [self._dump(obj) for obj in objs]
        if not items:
            return objs
        signals = self._signals if self._signalled else None
        if signals is not None:
            keys = [key for key, _ in items]
            yield from signals._send_pre("pre_update", "update_many", objs, keys, seconds)
        results = yield Call("replace_many", (items, seconds))
        yield from self._finish_batch(
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
    ) -> Op[None]:
        """Send the batch's post signal for the records written, then raise any refusal."""
        error, why, done = refusal
        if signals is not None:
            written = [i for i, ok in enumerate(results) if ok]
            yield from signals._send_post_batch(
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


def _release_all(lease_keys: list[str], token: bytes) -> Op[None]:
    """Delete the leases in ``lease_keys`` that still hold ``token`` (best effort)."""
    try:
        held = yield Cleanup("get_many", (lease_keys,))  # to its end, even if cancelled
        ours = [key for key, value in zip(lease_keys, held, strict=True) if value == token]
        if ours:
            yield Cleanup("delete_many", (ours,))
    except BackendError:
        pass  # they expire on their own


def _name(fn: object) -> str:
    """A user function's name for messages."""
    return getattr(fn, "__qualname__", None) or repr(fn)


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
