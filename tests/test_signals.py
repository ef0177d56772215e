"""Write signals: pre/post per write and per batch, vetoes, wrapped post errors; every backend."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import pytest

import cacheorm as co


@dataclasses.dataclass(frozen=True)
class SigUser:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    visits: int = 0


@dataclasses.dataclass(frozen=True)
class SigTicket:
    id: Annotated[int | None, co.Field(primary_key=True, auto=True)]
    title: str


class Veto(Exception):
    """What a test receiver raises."""


Log = list[tuple[str, str, tuple[Any, ...], tuple[str | None, ...]]]


def record_all(signals: co.RepositorySignals[Any], log: Log) -> None:
    """Connect a receiver logging (signal, operation, records, keys) to every signal."""

    def receiver(event: co.WriteEvent[Any]) -> None:
        log.append((event.signal, event.operation, event.records, event.keys))

    for name in co._signals.SIGNAL_NAMES:
        getattr(signals, name).connect(receiver)


@pytest.fixture
def users(backend: co.Backend) -> co.Repository[SigUser]:
    """A SigUser repository on each backend."""
    return co.Repository(SigUser, backend=backend, namespace="sig_user")


@pytest.fixture
def tickets(backend: co.Backend) -> co.Repository[SigTicket]:
    """A SigTicket (auto id) repository on each backend."""
    return co.Repository(SigTicket, backend=backend, namespace="sig_ticket")


@pytest.fixture(autouse=True)
def _no_model_receivers() -> Iterator[None]:
    """Leave no model-level receiver connected after a test."""
    yield
    for name in co._signals.SIGNAL_NAMES:
        signal: co.ModelSignal = getattr(co.signals, name)
        for _, receiver, model in signal._entries:
            signal.disconnect(receiver, model=model)


def test_each_single_write_sends_its_pre_and_post(users: co.Repository[SigUser]) -> None:
    """create, save, update and delete each send their pre then post signal, with key and TTL."""
    log: Log = []
    record_all(users.signals, log)
    ttls: list[object] = []
    users.signals.post_save.connect(lambda event: ttls.append(event.ttl))
    sam = SigUser(1, "Sam")
    key = users.key_for(1)
    users.create(sam)
    users.save(sam, ttl=60)
    users.update(SigUser(1, "Kim"))
    users.delete(1)
    assert log == [
        ("pre_create", "create", (sam,), (key,)),
        ("post_create", "create", (sam,), (key,)),
        ("pre_save", "save", (sam,), (key,)),
        ("post_save", "save", (sam,), (key,)),
        ("pre_update", "update", (SigUser(1, "Kim"),), (key,)),
        ("post_update", "update", (SigUser(1, "Kim"),), (key,)),
        ("pre_delete", "delete", (), (key,)),
        ("post_delete", "delete", (), (key,)),
    ]
    assert ttls == [60.0]


def test_event_payload(users: co.Repository[SigUser]) -> None:
    """The event names the repository, model, pk, TTL and says whether it is a batch."""
    events: list[co.WriteEvent[SigUser]] = []
    users.signals.pre_update.connect(events.append)
    users.signals.post_delete.connect(events.append)
    users.create(SigUser(1, "Sam"))
    users.update(SigUser(1, "Kim"))
    users.delete(1)
    update, delete = events
    assert update.repository is users
    assert update.model is SigUser
    assert update.record == SigUser(1, "Kim")
    assert update.pks == (1,)
    assert update.ttl is co.KEEP_TTL
    assert update.attempt == 1
    assert not update.batch
    assert update.deleted is None
    assert delete.pks == (1,)
    assert delete.deleted == 1
    assert delete.ttl is None
    with pytest.raises(ValueError, match="carries 0 records"):
        _ = delete.record


def test_batches_send_one_event_each(users: co.Repository[SigUser]) -> None:
    """create_many / save_many / update_many / delete_many send one pre and one post, not N."""
    log: Log = []
    record_all(users.signals, log)
    batch = [SigUser(i, f"u{i}") for i in range(3)]
    keys = tuple(users.key_for(i) for i in range(3))
    users.create_many(batch)
    users.save_many(batch)
    users.update_many(batch)
    assert users.delete_many(range(3)) == 3
    records = tuple(batch)
    assert log == [
        ("pre_create", "create_many", records, keys),
        ("post_create", "create_many", records, keys),
        ("pre_save", "save_many", records, keys),
        ("post_save", "save_many", records, keys),
        ("pre_update", "update_many", records, keys),
        ("post_update", "update_many", records, keys),
        ("pre_delete", "delete_many", (), keys),
        ("post_delete", "delete_many", (), keys),
    ]


def test_empty_batches_send_nothing(users: co.Repository[SigUser]) -> None:
    """A batch of nothing writes nothing and sends nothing."""
    log: Log = []
    record_all(users.signals, log)
    users.create_many([])
    users.save_many([])
    users.update_many([])
    users.delete_many([])
    assert log == []


def _write(op: str, users: co.Repository[SigUser], tickets: co.Repository[SigTicket]) -> None:
    new, old = SigUser(2, "New"), SigUser(1, "Changed")
    calls: dict[str, Callable[[], object]] = {
        "create": lambda: users.create(new),
        "create_auto": lambda: tickets.create(SigTicket(None, "t")),
        "create_many": lambda: users.create_many([new, SigUser(3, "x")]),
        "create_many_auto": lambda: tickets.create_many([SigTicket(None, "t")] * 2),
        "get_or_create": lambda: users.get_or_create(new),
        "get_or_create_auto": lambda: tickets.get_or_create(SigTicket(None, "t")),
        "save": lambda: users.save(new),
        "save_many": lambda: users.save_many([new, old]),
        "update": lambda: users.update(old),
        "update_many": lambda: users.update_many([old]),
        "update_with": lambda: users.update_with(1, lambda u: dataclasses.replace(u, visits=9)),
        "patch": lambda: users.patch(1, name="Patched"),
        "delete": lambda: users.delete(1),
        "delete_many": lambda: users.delete_many([1, 2]),
    }
    calls[op]()


WRITES = [
    ("create", "pre_create"),
    ("create_auto", "pre_create"),
    ("create_many", "pre_create"),
    ("create_many_auto", "pre_create"),
    ("get_or_create", "pre_create"),
    ("get_or_create_auto", "pre_create"),
    ("save", "pre_save"),
    ("save_many", "pre_save"),
    ("update", "pre_update"),
    ("update_many", "pre_update"),
    ("update_with", "pre_update"),
    ("patch", "pre_update"),
    ("delete", "pre_delete"),
    ("delete_many", "pre_delete"),
]


@pytest.mark.parametrize(("op", "signal"), WRITES)
def test_a_raising_pre_receiver_vetoes_the_write(
    backend: co.Backend,
    users: co.Repository[SigUser],
    tickets: co.Repository[SigTicket],
    op: str,
    signal: str,
) -> None:
    """The caller gets the receiver's exception itself, and the store is exactly as before."""
    users.save(SigUser(1, "Sam"))
    counter = f"{tickets.namespace}:__seq__"
    keys = [users.key_for(i) for i in (1, 2, 3)] + [tickets.key_for(i) for i in (1, 2)]
    before = backend.get_many([*keys, counter])
    veto = Veto("no")
    posts: list[object] = []

    def refuse(event: co.WriteEvent[Any]) -> None:
        raise veto

    for repo in (users, tickets):
        getattr(repo.signals, signal).connect(refuse)
        getattr(repo.signals, signal.replace("pre_", "post_")).connect(posts.append)
    with pytest.raises(Veto) as caught:
        _write(op, users, tickets)
    assert caught.value is veto
    assert backend.get_many([*keys, counter]) == before
    assert before[-1] is None  # no auto id was even drawn from the counter
    assert posts == []


def test_the_first_raising_pre_receiver_stops_the_rest(users: co.Repository[SigUser]) -> None:
    """Receivers run in connection order; after a veto, the later ones do not run."""
    ran: list[str] = []

    def first(event: co.WriteEvent[SigUser]) -> None:
        ran.append("first")

    def second(event: co.WriteEvent[SigUser]) -> None:
        ran.append("second")
        raise Veto

    def third(event: co.WriteEvent[SigUser]) -> None:
        ran.append("third")

    for receiver in (first, second, third):
        users.signals.pre_save.connect(receiver)
    with pytest.raises(Veto):
        users.save(SigUser(1, "Sam"))
    assert ran == ["first", "second"]
    assert not users.exists(1)


@pytest.mark.parametrize("op", ["save", "delete", "save_many", "update_with"])
def test_a_raising_post_receiver_is_wrapped_and_the_write_stands(
    users: co.Repository[SigUser], op: str
) -> None:
    """Every post receiver runs; the caller gets PostSignalError chained to the first error."""
    users.create(SigUser(1, "Sam"))
    ran: list[str] = []
    first, second = Veto("one"), Veto("two")

    def failing(error: Exception) -> Any:
        def receiver(event: co.WriteEvent[SigUser]) -> None:
            ran.append(str(error))
            raise error

        return receiver

    signal = {"save": "post_save", "save_many": "post_save"}.get(op, "post_update")
    if op == "delete":
        signal = "post_delete"
    getattr(users.signals, signal).connect(failing(first))
    getattr(users.signals, signal).connect(lambda event: ran.append("ok"))
    getattr(users.signals, signal).connect(failing(second))
    calls: dict[str, Callable[[], object]] = {
        "save": lambda: users.save(SigUser(1, "Kim")),
        "save_many": lambda: users.save_many([SigUser(1, "Kim")]),
        "update_with": lambda: users.update_with(1, lambda u: dataclasses.replace(u, name="Kim")),
        "delete": lambda: users.delete(1),
    }
    with pytest.raises(co.PostSignalError, match="the write happened and was not undone") as caught:
        calls[op]()
    assert ran == ["one", "ok", "two"]
    error = caught.value
    assert error.__cause__ is first
    assert error.errors == (first, second)
    assert error.key == users.key_for(1)
    assert "Veto: one (and 1 more)" in str(error)
    if op == "delete":
        assert "deleted" in str(error)
        assert not users.exists(1)
    else:
        assert users.get(1).name == "Kim"


def test_update_with_sends_pre_per_attempt_and_post_once(
    backend: co.Backend, users: co.Repository[SigUser]
) -> None:
    """A forced conflict: pre_update before each CAS attempt, post_update once for the winner."""
    users.create(SigUser(1, "Sam"))
    other = co.Repository(SigUser, backend=backend, namespace="sig_user")
    pre: list[co.WriteEvent[SigUser]] = []
    post: list[co.WriteEvent[SigUser]] = []
    users.signals.pre_update.connect(pre.append)
    users.signals.post_update.connect(post.append)
    calls = 0

    def bump(user: SigUser) -> SigUser:
        nonlocal calls
        calls += 1
        if calls == 1:  # another writer changes the record between the read and the CAS
            other.save(dataclasses.replace(user, name="Other"))
        return dataclasses.replace(user, visits=user.visits + 1)

    result = users.update_with(1, bump)
    assert calls == 2
    assert [(e.attempt, e.record) for e in pre] == [
        (1, SigUser(1, "Sam", 1)),
        (2, SigUser(1, "Other", 1)),
    ]
    assert [(e.operation, e.attempt, e.record) for e in post] == [
        ("update_with", 2, SigUser(1, "Other", 1))
    ]
    assert result == users.get(1) == SigUser(1, "Other", 1)


def test_patch_reports_itself_and_a_veto_on_a_retry_writes_nothing(
    backend: co.Backend, users: co.Repository[SigUser]
) -> None:
    """patch sends update signals as "patch"; a veto on attempt 2 leaves the other write."""
    users.create(SigUser(1, "Sam"))
    other = co.Repository(SigUser, backend=backend, namespace="sig_user")
    attempts: list[tuple[str, int]] = []

    def conflict_then_veto(event: co.WriteEvent[SigUser]) -> None:
        attempts.append((event.operation, event.attempt))
        if event.attempt == 1:
            other.save(SigUser(1, "Other"))  # makes this attempt's CAS lose
        else:
            raise Veto

    users.signals.pre_update.connect(conflict_then_veto)
    with pytest.raises(Veto):
        users.patch(1, visits=5)
    assert attempts == [("patch", 1), ("patch", 2)]
    assert users.get(1) == SigUser(1, "Other")


def test_get_or_create_sends_create_signals_only_when_it_creates(
    users: co.Repository[SigUser],
) -> None:
    """A stored record is returned without any signal; an insert sends pre and post_create."""
    log: Log = []
    record_all(users.signals, log)
    created, was_created = users.get_or_create(SigUser(1, "Sam"))
    found, again = users.get_or_create(SigUser(1, "Other"))
    assert (was_created, again) == (True, False)
    assert found == created == SigUser(1, "Sam")
    key = users.key_for(1)
    assert log == [
        ("pre_create", "get_or_create", (created,), (key,)),
        ("post_create", "get_or_create", (created,), (key,)),
    ]


def test_auto_id_creates_pre_sees_none_post_sees_the_id(
    tickets: co.Repository[SigTicket],
) -> None:
    """pre_create carries id None and key None; post_create the assigned id and its key."""
    events: list[co.WriteEvent[SigTicket]] = []
    tickets.signals.pre_create.connect(events.append)
    tickets.signals.post_create.connect(events.append)
    one = tickets.create(SigTicket(None, "a"))
    two, created = tickets.get_or_create(SigTicket(None, "b"))
    batch = tickets.create_many([SigTicket(None, "c"), SigTicket(None, "d")])
    assert created
    summary = [(e.signal, e.operation, e.pks, e.keys) for e in events]
    none2 = (None, None)
    assert summary == [
        ("pre_create", "create", (None,), (None,)),
        ("post_create", "create", (one.id,), (tickets.key_of(one),)),
        ("pre_create", "get_or_create", (None,), (None,)),
        ("post_create", "get_or_create", (two.id,), (tickets.key_of(two),)),
        ("pre_create", "create_many", none2, none2),
        (
            "post_create",
            "create_many",
            tuple(t.id for t in batch),
            tuple(map(tickets.key_of, batch)),
        ),
    ]


def test_get_or_load_fills_send_no_signals(users: co.Repository[SigUser]) -> None:
    """A read-through fill is a cache fill, not a write: no create or save signals."""
    log: Log = []
    record_all(users.signals, log)
    assert users.get_or_load(1, lambda: SigUser(1, "Sam")) == SigUser(1, "Sam")
    assert users.get_or_load_many([2], lambda pks: [SigUser(2, "Kim")]) == [SigUser(2, "Kim")]
    assert users.exists(1)
    assert users.exists(2)
    assert log == []


def test_deleting_an_absent_key_sends_both_signals(users: co.Repository[SigUser]) -> None:
    """delete of an absent key still sends pre_delete and post_delete, with deleted 0."""
    events: list[co.WriteEvent[SigUser]] = []
    users.signals.pre_delete.connect(events.append)
    users.signals.post_delete.connect(events.append)
    assert users.delete(9) is False
    assert users.delete_many([9, 10]) == 0
    assert [(e.signal, e.deleted) for e in events] == [
        ("pre_delete", None),
        ("post_delete", 0),
        ("pre_delete", None),
        ("post_delete", 0),
    ]


def test_invalid_records_fail_before_any_receiver(users: co.Repository[SigUser]) -> None:
    """Records are validated first: receivers only ever see records that can be written."""
    seen: list[object] = []
    users.signals.pre_save.connect(seen.append)
    with pytest.raises(co.ValidationError):
        users.save(SigUser(1, 5))  # type: ignore[arg-type]
    with pytest.raises(co.ValidationError):
        users.save_many([SigUser(1, "ok"), "nope"])  # type: ignore[list-item]
    assert seen == []


def test_partly_refused_batches_post_the_written_records(users: co.Repository[SigUser]) -> None:
    """Batches with refused keys: post carries what was written, then the error is raised."""
    users.create(SigUser(1, "Sam"))
    posted: list[tuple[Any, ...]] = []
    users.signals.post_create.connect(lambda e: posted.append(e.records))
    users.signals.post_update.connect(lambda e: posted.append(e.records))
    with pytest.raises(co.AlreadyExists) as exists:
        users.create_many([SigUser(1, "Again"), SigUser(2, "Kim")])
    assert exists.value.keys == [users.key_for(1)]
    with pytest.raises(co.NotFound) as absent:
        users.update_many([SigUser(2, "Kim2"), SigUser(3, "Nobody")])
    assert absent.value.keys == [users.key_for(3)]
    with pytest.raises(co.AlreadyExists):
        users.create_many([SigUser(1, "Again")])  # nothing written: no post
    assert posted == [(SigUser(2, "Kim"),), (SigUser(2, "Kim2"),)]


def test_post_error_on_a_partly_refused_batch_keeps_the_refusal(
    users: co.Repository[SigUser],
) -> None:
    """A failing post receiver on a partly refused batch: PostSignalError carrying the refusal."""
    users.create(SigUser(1, "Sam"))

    def fail(event: co.WriteEvent[SigUser]) -> None:
        raise Veto("post")

    users.signals.post_create.connect(fail)
    with pytest.raises(co.PostSignalError) as caught:
        users.create_many([SigUser(1, "Again"), SigUser(2, "Kim")])
    assert isinstance(caught.value.refused, co.AlreadyExists)
    assert "already existed" in str(caught.value)
    assert caught.value.event.records == (SigUser(2, "Kim"),)
    assert users.get(2) == SigUser(2, "Kim")


def test_model_level_receivers_reach_repositories_built_before_and_after(
    backend: co.Backend, users: co.Repository[SigUser]
) -> None:
    """co.signals.X.connect(fn, model=M) reaches every M repository; disconnect stops it."""
    seen: list[str] = []

    def receiver(event: co.WriteEvent[SigUser]) -> None:
        seen.append(event.repository.namespace)

    assert not users._signalled
    co.signals.post_save.connect(receiver, model=SigUser)
    later = co.Repository(SigUser, backend=backend, namespace="sig_user_later")
    tickets = co.Repository(SigTicket, backend=backend, namespace="sig_ticket")
    users.save(SigUser(1, "Sam"))
    later.save(SigUser(1, "Sam"))
    tickets.save(SigTicket(1, "t"))
    assert seen == ["sig_user", "sig_user_later"]
    assert not tickets._signalled
    assert co.signals.post_save.disconnect(receiver, model=SigUser)
    assert not co.signals.post_save.disconnect(receiver, model=SigUser)
    assert not users._signalled
    assert not later._signalled
    users.save(SigUser(1, "Sam"))
    assert seen == ["sig_user", "sig_user_later"]


def test_model_less_receivers_reach_every_repository(
    users: co.Repository[SigUser], tickets: co.Repository[SigTicket]
) -> None:
    """Without model=, a receiver sees every repository's writes."""
    seen: list[type] = []
    co.signals.pre_delete.connect(lambda event: seen.append(event.model))
    users.delete(1)
    tickets.delete(1)
    assert seen == [SigUser, SigTicket]


def test_repository_and_model_receivers_run_in_connection_order(
    users: co.Repository[SigUser],
) -> None:
    """Repository and model-level connections interleave by the order they were made."""
    order: list[str] = []
    users.signals.pre_save.connect(lambda e: order.append("repo 1"))
    co.signals.pre_save.connect(lambda e: order.append("model"), model=SigUser)
    users.signals.pre_save.connect(lambda e: order.append("repo 2"))
    users.save(SigUser(1, "Sam"))
    assert order == ["repo 1", "model", "repo 2"]


def test_connect_and_disconnect_rules(users: co.Repository[SigUser]) -> None:
    """connect returns the receiver (a decorator), ignores repeats; bad receivers are refused."""
    calls: list[int] = []

    @users.signals.post_save.connect
    def receiver(event: co.WriteEvent[SigUser]) -> None:
        calls.append(1)

    users.signals.post_save.connect(receiver)
    co.signals.post_save.connect(receiver, model=SigUser)
    co.signals.post_save.connect(receiver, model=SigUser)
    users.save(SigUser(1, "Sam"))
    assert calls == [1, 1]
    assert "receivers=2" in repr(users.signals.post_save)
    assert "ModelSignal post_save receivers=1" in repr(co.signals.post_save)
    assert users.signals.post_save.disconnect(receiver)
    assert not users.signals.post_save.disconnect(receiver)
    assert "RepositorySignals" in repr(users.signals)
    assert repr(co.signals) == "<cacheorm.signals>"
    with pytest.raises(co.ConfigurationError, match="takes a callable"):
        users.signals.pre_save.connect("nope")  # type: ignore[arg-type]
    with pytest.raises(co.ConfigurationError, match="takes a dataclass class"):
        co.signals.pre_save.connect(receiver, model=SigUser(1, "x"))  # type: ignore[call-overload]


def test_async_receivers_are_refused_on_sync_repositories(users: co.Repository[SigUser]) -> None:
    """Connecting an async receiver to a sync repository fails at once, saying why."""

    async def coroutine(event: co.WriteEvent[SigUser]) -> None:
        pass  # pragma: no cover - never awaited

    with pytest.raises(co.ConfigurationError, match="async receiver cannot run"):
        users.signals.pre_save.connect(coroutine)


def test_async_model_receivers_are_refused_on_sync_repositories(
    users: co.Repository[SigUser],
) -> None:
    """An async receiver connected model-wide fails a sync write clearly (pre: nothing written)."""

    async def pre(event: co.WriteEvent[SigUser]) -> None:
        pass  # pragma: no cover - never awaited

    co.signals.pre_save.connect(pre, model=SigUser)
    with pytest.raises(co.ConfigurationError, match="returned an awaitable"):
        users.save(SigUser(1, "Sam"))
    assert not users.exists(1)
    co.signals.pre_save.disconnect(pre, model=SigUser)
    co.signals.post_save.connect(pre, model=SigUser)
    with pytest.raises(co.PostSignalError) as caught:
        users.save(SigUser(1, "Sam"))
    assert isinstance(caught.value.__cause__, co.ConfigurationError)
    assert users.exists(1)


def test_signals_and_hooks_together(backend: co.Backend) -> None:
    """A repository with hooks also sends signals; a veto is reported to hooks as the error."""
    events: list[co.OperationEvent] = []
    repo = co.Repository(SigUser, backend=backend, namespace="sig_user", hooks=[events.append])

    def refuse(event: co.WriteEvent[SigUser]) -> None:
        raise Veto

    repo.signals.pre_save.connect(refuse)
    with pytest.raises(Veto):
        repo.save(SigUser(1, "Sam"))
    assert [(e.operation, e.error_type) for e in events] == [("save", "Veto")]


def test_connect_and_disconnect_while_writing_from_threads(users: co.Repository[SigUser]) -> None:
    """Receivers change in other threads during writes: no error, no lost or torn snapshot."""
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []
    lock = threading.Lock()

    def make(i: int) -> Any:
        def receiver(event: co.WriteEvent[SigUser]) -> None:
            with lock:
                seen.append(i)

        return receiver

    def churn(i: int) -> None:
        receiver = make(i)
        try:
            while not stop.is_set():
                users.signals.post_save.connect(receiver)
                co.signals.post_save.connect(receiver, model=SigUser)
                users.signals.post_save.disconnect(receiver)
                co.signals.post_save.disconnect(receiver, model=SigUser)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for n in range(200):
            users.save(SigUser(n % 5, "Sam"))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert not users._signalled
    assert users.signals.post_save.receivers == ()
    before = len(seen)
    users.save(SigUser(1, "Sam"))
    assert len(seen) == before


def test_get_or_create_losing_the_race_after_pre_create_sends_no_post(
    backend: co.Backend, users: co.Repository[SigUser]
) -> None:
    """Another writer inserts between the read and the insert: its record wins, no post_create."""
    other = co.Repository(SigUser, backend=backend, namespace="sig_user")
    posts: list[object] = []

    def race(event: co.WriteEvent[SigUser]) -> None:
        other.create(SigUser(1, "Other"))

    users.signals.pre_create.connect(race)
    users.signals.post_create.connect(posts.append)
    assert users.get_or_create(SigUser(1, "Sam")) == (SigUser(1, "Other"), False)
    assert posts == []


def test_an_awaitable_that_is_not_a_coroutine_is_refused_too(
    users: co.Repository[SigUser],
) -> None:
    """A receiver returning any awaitable (here one without close()) fails the sync write."""

    class Pending:
        def __await__(self) -> Iterator[None]:
            yield None  # pragma: no cover - never awaited

    users.signals.pre_save.connect(lambda event: Pending())
    with pytest.raises(co.ConfigurationError, match="returned an awaitable"):
        users.save(SigUser(1, "Sam"))
    assert not users.exists(1)
