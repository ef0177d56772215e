"""Signals: receivers called before and after each write of a repository.

Eight signals, each a pair around one kind of write::

    pre_create / post_create   create, create_many, get_or_create (when it inserts)
    pre_save   / post_save     save, save_many
    pre_update / post_update   update, update_many, update_with, patch
    pre_delete / post_delete   delete, delete_many

A receiver is a function of one :class:`WriteEvent`. It is connected to one
repository (``repo.signals.pre_save.connect(fn)``) or to every repository of
a model, present and future (``co.signals.pre_save.connect(fn, model=User)``;
without ``model=``, to every repository). A batch write is one event that
carries the whole batch.

* ``pre_*`` receivers run after the records are validated and encoded and
  before any I/O. One that raises vetoes the write: nothing is written and
  the caller gets that exception unchanged; the receivers after it do not
  run.
* ``post_*`` receivers run after the write succeeded. All of them run; if
  any raised, the caller gets a :class:`PostSignalError` (the write stands,
  it is not undone) chained to the first receiver's exception.

Receivers run in the order they were connected (repository and model
connections interleaved by that order), in the writer's thread.

Cost: each repository keeps one flag, true while any receiver concerns it;
a write checks it once and does nothing else when it is false. Connecting
and disconnecting (under one lock) recompute the flag and an immutable
snapshot of each signal's receivers, so a send iterates a tuple without
locking and a connect during a send takes effect from the next write.

The sending rules (which receivers, in which order, what an error means)
live here without I/O: :attr:`Signal.receivers` is the snapshot a driver
iterates, so an async driver can await async receivers with the same
events and :class:`PostSignalError`.
"""

# pyright: reportPrivateUsage=false
# (the repository's own helper: it reads and sets its private state on purpose.)

from __future__ import annotations

import dataclasses
import inspect
import itertools
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from cacheorm._errors import CacheORMError, ConfigurationError, describe_keys
from cacheorm._ops import Await, Op
from cacheorm._ttl import BackendTTL

if TYPE_CHECKING:
    from cacheorm._async_repository import AsyncRepository
    from cacheorm._repository import Repository

__all__ = [
    "ModelSignal",
    "ModelSignals",
    "PostSignalError",
    "RepositorySignals",
    "Signal",
    "WriteEvent",
    "signals",
]

T = TypeVar("T")
M = TypeVar("M")

#: Every signal's name, pre before post.
SIGNAL_NAMES = (
    "pre_create",
    "post_create",
    "pre_save",
    "post_save",
    "pre_update",
    "post_update",
    "pre_delete",
    "post_delete",
)


@dataclasses.dataclass(frozen=True, slots=True)
class WriteEvent(Generic[T]):
    """One write, as its ``pre_*`` and ``post_*`` receivers see it.

    A single-record write carries one record; a batch (``save_many``, ...)
    carries all of them in one event. ``records``, ``keys`` and ``pks`` are
    parallel tuples.

    Attributes:
        signal: the signal sent: ``"pre_save"``, ``"post_create"``, ...
        operation: the method called: ``"create"``, ``"create_many"``,
            ``"get_or_create"``, ``"save"``, ``"save_many"``, ``"update"``,
            ``"update_many"``, ``"update_with"``, ``"patch"``, ``"delete"``,
            ``"delete_many"``.
        repository: the repository writing.
        records: the records written (empty for deletes, which name keys only).
            In a ``post_*`` event of a batch that was partly refused, only the
            records that were written.
        keys: their backend keys; ``None`` for a record whose auto id is not
            assigned yet (``pre_create``).
        pks: their primary keys (``None`` where the auto id is not assigned yet).
        ttl: the TTL written: seconds, ``None`` for no expiry, or
            :data:`~cacheorm.KEEP_TTL` for updates that keep it; ``None`` for deletes.
        attempt: for ``update_with`` / ``patch``, the compare-and-set attempt
            (1, 2, ...: ``pre_update`` is sent before each); 1 otherwise.
        deleted: ``post_delete`` only: how many of the keys held a record.
    """

    signal: str
    operation: str
    repository: Repository[T] | AsyncRepository[T]
    records: tuple[T, ...]
    keys: tuple[str | None, ...]
    pks: tuple[Any, ...]
    ttl: BackendTTL
    attempt: int = 1
    deleted: int | None = None

    @property
    def model(self) -> type[T]:
        """The repository's dataclass."""
        return self.repository.model

    @property
    def batch(self) -> bool:
        """True for the ``*_many`` operations."""
        return self.operation.endswith("_many")

    @property
    def record(self) -> T:
        """The one record of a single-record write.

        Raises:
            ValueError: the event carries no record (a delete) or several (a batch).
        """
        if len(self.records) != 1:
            raise ValueError(
                f"{self.signal} of {self.operation} carries {len(self.records)} records, "
                "not one; read .records"
            )
        return self.records[0]


#: A receiver: called with the event; its return value is ignored.
Receiver = Callable[[WriteEvent[T]], object]

# One lock for every connection change; sends never take it.
_LOCK = threading.RLock()
_SEQUENCE = itertools.count()
#: Every live repository's signals, so a model-level connect reaches them.
_REPOSITORIES: weakref.WeakSet[RepositorySignals[Any]] = weakref.WeakSet()


def _check_receiver(receiver: object, where: str) -> None:
    if not callable(receiver):
        raise ConfigurationError(
            f"{where}.connect() takes a callable receiving a WriteEvent, not {receiver!r}"
        )


def _name(receiver: object) -> str:
    return getattr(receiver, "__qualname__", None) or repr(receiver)


class Signal(Generic[T]):
    """One signal of one repository, for example ``repo.signals.pre_save``."""

    __slots__ = ("_own", "_owner", "name", "receivers")

    def __init__(self, name: str, owner: RepositorySignals[T]) -> None:
        self.name = name
        self._owner = owner
        self._own: tuple[tuple[int, Receiver[T]], ...] = ()
        #: The receivers a send calls, in order: this repository's and the
        #: model-level ones that match it. An immutable snapshot.
        self.receivers: tuple[Receiver[T], ...] = ()

    def connect(self, receiver: Receiver[T]) -> Receiver[T]:
        """Call ``receiver(event)`` on this signal of this repository; returns ``receiver``.

        Usable as a decorator. Connecting a receiver that is connected already
        does nothing.

        Raises:
            ConfigurationError: ``receiver`` is not callable, or is an async
                function connected to a sync ``Repository`` (it calls receivers
                synchronously; an ``AsyncRepository`` awaits them).
        """
        _check_receiver(receiver, self.name)
        if inspect.iscoroutinefunction(receiver) and not self._owner._repository._awaits:
            raise ConfigurationError(
                f"{self.name}.connect({_name(receiver)}): an async receiver cannot run on a "
                "sync Repository; connect a plain function, or use AsyncRepository"
            )
        with _LOCK:
            if not any(fn == receiver for _, fn in self._own):
                self._own += ((next(_SEQUENCE), receiver),)
                self._owner._refresh()
        return receiver

    def disconnect(self, receiver: Receiver[T]) -> bool:
        """Stop calling ``receiver``; True if it was connected here."""
        with _LOCK:
            kept = tuple(entry for entry in self._own if entry[1] != receiver)
            if len(kept) == len(self._own):
                return False
            self._own = kept
            self._owner._refresh()
            return True

    def __repr__(self) -> str:
        return f"<Signal {self.name} receivers={len(self.receivers)}>"


class RepositorySignals(Generic[T]):
    """The signals of one repository: ``repo.signals.pre_save`` and the seven others."""

    def __init__(self, repository: Repository[T] | AsyncRepository[T]) -> None:
        self._repository = repository
        self.pre_create: Signal[T] = Signal("pre_create", self)
        self.post_create: Signal[T] = Signal("post_create", self)
        self.pre_save: Signal[T] = Signal("pre_save", self)
        self.post_save: Signal[T] = Signal("post_save", self)
        self.pre_update: Signal[T] = Signal("pre_update", self)
        self.post_update: Signal[T] = Signal("post_update", self)
        self.pre_delete: Signal[T] = Signal("pre_delete", self)
        self.post_delete: Signal[T] = Signal("post_delete", self)
        with _LOCK:
            _REPOSITORIES.add(self)
            self._refresh()

    def _refresh(self) -> None:
        """Recompute every signal's receivers and the repository's flag (under _LOCK)."""
        model = self._repository.model
        active = False
        for name in SIGNAL_NAMES:
            signal: Signal[T] = getattr(self, name)
            entries: list[tuple[int, Receiver[T]]] = list(signal._own)
            entries += getattr(signals, name).matching(model)
            entries.sort(key=_connection_order)
            signal.receivers = tuple(fn for _, fn in entries)
            active = active or bool(entries)
        self._repository._signalled = active

    def _event(
        self,
        signal: str,
        operation: str,
        records: Sequence[T],
        keys: Sequence[str | None],
        ttl: BackendTTL,
        attempt: int,
    ) -> WriteEvent[T]:
        pk = self._repository._pk_get
        if len(records) == 1:  # the common case, without a generator
            pks: tuple[Any, ...] = (None if keys[0] is None else pk(records[0]),)
        else:
            pks = tuple(
                None if key is None else pk(obj) for obj, key in zip(records, keys, strict=True)
            )
        return WriteEvent(
            signal, operation, self._repository, tuple(records), tuple(keys), pks, ttl, attempt
        )

    # Sending is an operation of cacheorm._ops: a receiver that returns an
    # awaitable is awaited by AsyncRepository and refused by Repository.

    def _send_pre(
        self,
        signal: str,
        operation: str,
        records: Sequence[T],
        keys: Sequence[str | None],
        ttl: BackendTTL,
        attempt: int = 1,
    ) -> Op[None]:
        """Send a ``pre_*`` signal: the first receiver that raises vetoes the write."""
        receivers = getattr(self, signal).receivers
        if receivers:
            yield from send_pre(
                receivers, self._event(signal, operation, records, keys, ttl, attempt)
            )

    def _send_post(
        self,
        signal: str,
        operation: str,
        records: Sequence[T],
        keys: Sequence[str | None],
        ttl: BackendTTL,
        attempt: int = 1,
        refused: CacheORMError | None = None,
    ) -> Op[None]:
        """Send a ``post_*`` signal: every receiver runs; failures raise PostSignalError."""
        receivers = getattr(self, signal).receivers
        if receivers and records:
            event = self._event(signal, operation, records, keys, ttl, attempt)
            yield from send_post(receivers, event, refused)

    def _send_post_batch(
        self,
        signal: str,
        operation: str,
        records: Sequence[T],
        keys: Sequence[str],
        ttl: BackendTTL,
        refuse: Callable[[], None],
    ) -> Op[None]:
        """``post_*`` of a batch with the records written; then ``refuse()`` raises the rest."""
        try:
            refuse()
        except CacheORMError as refused:
            yield from self._send_post(signal, operation, records, keys, ttl, refused=refused)
            raise
        yield from self._send_post(signal, operation, records, keys, ttl)

    def _send_delete(
        self,
        signal: str,
        operation: str,
        pks: Sequence[Any],
        keys: Sequence[str],
        deleted: int | None,
    ) -> Op[None]:
        """Send ``pre_delete`` (``deleted`` None) or ``post_delete``."""
        receivers = getattr(self, signal).receivers
        if not receivers:
            return
        event = WriteEvent(
            signal, operation, self._repository, (), tuple(keys), tuple(pks), None, 1, deleted
        )
        if deleted is None:
            yield from send_pre(receivers, event)
        else:
            yield from send_post(receivers, event, None)

    def __repr__(self) -> str:
        return f"<RepositorySignals of {self._repository!r}>"


def send_pre(receivers: Sequence[Receiver[T]], event: WriteEvent[T]) -> Op[None]:
    """Call each receiver in order; the first exception propagates (the veto)."""
    for receiver in receivers:
        result = receiver(event)
        if result is not None and inspect.isawaitable(result):
            yield Await(result, _async_on_sync(receiver, event))


def send_post(
    receivers: Sequence[Receiver[T]], event: WriteEvent[T], refused: CacheORMError | None
) -> Op[None]:
    """Call every receiver; if any raised, a PostSignalError chained to the first."""
    errors: list[Exception] = []
    for receiver in receivers:
        try:
            result = receiver(event)
            if result is not None and inspect.isawaitable(result):
                yield Await(result, _async_on_sync(receiver, event))
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise PostSignalError(event, errors, refused) from errors[0]


def _async_on_sync(receiver: object, event: WriteEvent[Any]) -> str:
    """What the sync Repository says of a receiver that returned an awaitable."""
    return (
        f"{event.signal} receiver {_name(receiver)} returned an awaitable: async receivers "
        f"cannot run on the sync Repository of {event.model.__qualname__}; use "
        "AsyncRepository, or connect a plain function"
    )


class PostSignalError(CacheORMError):
    """A ``post_*`` receiver raised after the write happened; the write stands.

    The receiver's exception is the ``__cause__``; every other receiver ran.

    Attributes:
        event: the event the receivers got (its ``records`` were written).
        errors: every exception the receivers raised, in order.
        refused: for a batch that was also partly refused (``AlreadyExists`` /
            ``NotFound`` listing the keys not written), that error; else None.
    """

    def __init__(
        self,
        event: WriteEvent[Any],
        errors: Sequence[Exception],
        refused: CacheORMError | None = None,
    ) -> None:
        written = [key for key in event.keys if key is not None]
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        verb = "deleted" if event.signal == "post_delete" else "wrote"
        message = (
            f"{event.model.__qualname__}: {event.operation} {verb} {describe_keys(written)}, "
            f"then a {event.signal} receiver raised {type(first).__name__}: {first}{more}; the "
            "write happened and was not undone"
        )
        if refused is not None:
            message += f"; besides, {refused}"
        super().__init__(message, model=event.model, key=written[0] if written else None)
        self.event = event
        self.errors = tuple(errors)
        self.refused = refused


class ModelSignal:
    """One signal for every repository of a model: ``co.signals.pre_save``."""

    __slots__ = ("_entries", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: tuple[tuple[int, Receiver[Any], type | None], ...] = ()

    @overload
    def connect(self, receiver: Receiver[M], *, model: type[M]) -> Receiver[M]: ...

    @overload
    def connect(self, receiver: Receiver[Any], *, model: None = None) -> Receiver[Any]: ...

    def connect(self, receiver: Receiver[Any], *, model: type | None = None) -> Receiver[Any]:
        """Call ``receiver(event)`` on this signal of every repository of ``model``.

        Repositories built before and after the call are both reached. Without
        ``model``, every repository. Connecting a receiver that is connected
        already (for the same model) does nothing.

        Raises:
            ConfigurationError: ``receiver`` is not callable, or ``model`` is not a class.
        """
        _check_receiver(receiver, f"signals.{self.name}")
        if model is not None and not isinstance(model, type):
            raise ConfigurationError(
                f"signals.{self.name}.connect(..., model=) takes a dataclass class, not {model!r}"
            )
        with _LOCK:
            if any(fn == receiver and of is model for _, fn, of in self._entries):
                return receiver
            self._entries += ((next(_SEQUENCE), receiver, model),)
            _refresh_all(model)
        return receiver

    def disconnect(self, receiver: Receiver[Any], *, model: type | None = None) -> bool:
        """Stop calling ``receiver`` for ``model``; True if it was connected for it."""
        with _LOCK:
            kept = tuple(e for e in self._entries if not (e[1] == receiver and e[2] is model))
            if len(kept) == len(self._entries):
                return False
            self._entries = kept
            _refresh_all(model)
            return True

    def matching(self, model: type) -> list[tuple[int, Receiver[Any]]]:
        """The (connection number, receiver) pairs that apply to ``model``."""
        return [(seq, fn) for seq, fn, of in self._entries if of is None or of is model]

    def __repr__(self) -> str:
        return f"<ModelSignal {self.name} receivers={len(self._entries)}>"


def _refresh_all(model: type | None) -> None:
    for repository_signals in list(_REPOSITORIES):
        if model is None or repository_signals._repository.model is model:
            repository_signals._refresh()


class ModelSignals:
    """The model-level signals, ``cacheorm.signals``.

    ``co.signals.pre_save.connect(fn, model=User)`` reaches every repository of
    ``User``; without ``model=``, every repository.
    """

    def __init__(self) -> None:
        self.pre_create = ModelSignal("pre_create")
        self.post_create = ModelSignal("post_create")
        self.pre_save = ModelSignal("pre_save")
        self.post_save = ModelSignal("post_save")
        self.pre_update = ModelSignal("pre_update")
        self.post_update = ModelSignal("post_update")
        self.pre_delete = ModelSignal("pre_delete")
        self.post_delete = ModelSignal("post_delete")

    def __repr__(self) -> str:
        return "<cacheorm.signals>"


#: The model-level signals (``cacheorm.signals``).
signals = ModelSignals()


def _connection_order(entry: tuple[int, object]) -> int:
    """Receivers run in the order they were connected (repository and model ones interleaved)."""
    return entry[0]
