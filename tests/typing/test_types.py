"""Inferred types users see, checked by ``mypy --strict`` (not run by pytest)."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Annotated

from typing_extensions import assert_type

import cacheorm as co


@dataclasses.dataclass
class User:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str


@dataclasses.dataclass(frozen=True)
class Collection:
    collector: Annotated[int, co.Field(primary_key=True)]
    article: Annotated[int, co.Field(primary_key=True)]
    mark: str = ""


def check_repository_types() -> None:
    users = co.Repository(User, backend=co.MemoryBackend(), serializer="json", ttl=3600)
    assert_type(users, co.Repository[User])
    assert_type(users.model, type[User])
    assert_type(users.get(1), User)
    assert_type(users.get_or_none(1), User | None)
    assert_type(users.get_many([1, 2, 3]), list[User | None])
    assert_type(users.create(User(id=1, name="Sam")), User)
    assert_type(users.save(User(id=1, name="Sam"), ttl=co.DEFAULT), User)
    assert_type(users.update(User(id=1, name="Sam"), ttl=None), User)
    assert_type(users.update(User(id=1, name="Sam"), ttl=co.KEEP_TTL), User)
    assert_type(users.update_many([User(id=1, name="Sam")], ttl=co.KEEP_TTL), list[User])
    assert_type(users.update_with(1, lambda u: u, ttl=co.KEEP_TTL), User)
    assert_type(users.patch(1, name="Max", ttl=co.KEEP_TTL), User)
    assert_type(users.patch(1, name="Max", ttl=co.DEFAULT), User)
    users.save(User(id=1, name="Sam"), ttl=co.KEEP_TTL)  # type: ignore[arg-type]
    users.create(User(id=1, name="Sam"), ttl=co.KEEP_TTL)  # type: ignore[arg-type]
    with co.Repository(User) as owned:
        assert_type(owned, co.Repository[User])
    owned.close()
    assert_type(users.get_or_create(User(id=1, name="Sam")), tuple[User, bool])
    assert_type(users.create_many([User(id=2, name="Ann")]), list[User])
    assert_type(users.save_many([User(id=2, name="Ann")]), list[User])
    assert_type(users.update_many([User(id=2, name="Ann")]), list[User])
    assert_type(users.exists(1), bool)
    assert_type(users.delete(1), bool)
    assert_type(users.delete_many([1, 2]), int)
    assert_type(users.key_for(1), str)
    assert_type(users.key_of(User(id=1, name="Sam")), str)
    assert_type(users.update_with(1, lambda u: dataclasses.replace(u, name="Max")), User)
    assert_type(users.patch(1, name="Max"), User)
    users.update_with(1, lambda u: u.name)  # type: ignore[arg-type,return-value]
    assert_type(users.patch(1, {"name": "Max"}, ttl=60), User)
    assert_type(users.get_or_load(1, lambda: User(id=1, name="Sam"), ttl=60), User)
    assert_type(
        users.get_or_load_many([1, 2], lambda pks: [User(id=pk, name="") for pk in pks]),
        list[User | None],
    )

    marks = co.Repository(Collection, key="collection.{collector}.{article}")
    assert_type(marks, co.Repository[Collection])
    assert_type(marks.get((1, 42)), Collection)


def check_backend_protocol() -> None:
    backend: co.Backend = co.MemoryBackend(max_entries=10)
    assert_type(backend.get("k"), bytes | None)
    assert_type(backend.get_many(["k"]), list[bytes | None])
    assert_type(backend.incr("n", 2), int)


def check_every_backend_satisfies_the_protocol() -> None:
    # Structural checks: mypy rejects these assignments if a backend's
    # signatures drift from the Backend protocol.
    backends: list[co.Backend] = [
        co.MemoryBackend(),
        co.FileSystemBackend("/tmp/records"),
        co.RedisBackend.from_url("redis://127.0.0.1:6379/0"),
        co.MemcachedBackend.from_servers(["127.0.0.1:11211"]),
    ]
    assert_type(co.RedisBackend.from_url("redis://127.0.0.1:6379/0"), co.RedisBackend)
    assert_type(co.MemcachedBackend.from_servers(["127.0.0.1:11211"]), co.MemcachedBackend)
    cluster = co.RedisBackend.from_cluster(["127.0.0.1:7000", "127.0.0.1:7001"])
    assert_type(cluster, co.RedisBackend)
    assert_type(co.RedisBackend.from_url("redis://127.0.0.1:7000", cluster=True), co.RedisBackend)
    pool = co.MemcachedBackend.from_servers(["a:11211", "b:11211"], down_server_reads_miss=True)
    assert_type(pool, co.MemcachedBackend)
    assert_type(pool.server_for("k"), str)
    backends += [cluster, pool]
    assert_type(co.FileSystemBackend("/tmp/records").purge_expired(), int)
    users = co.Repository(User, backend=backends[2], serializer="msgpack")
    assert_type(users.get_many([1, 2]), list[User | None])


def check_serializers() -> None:
    serializer: co.Serializer = co.JSONSerializer()
    assert_type(serializer.dumps({"a": 1}), bytes)
    registry = co.SerializerRegistry()
    registry.register("json2", co.JSONSerializer())
    assert_type(registry.get("json2"), co.Serializer)
    co.Repository(User, serializer=co.MsgpackSerializer(), registry=registry)


def check_codecs() -> None:
    stamp: co.Codec[datetime.datetime] = co.Timestamp("ms")
    assert_type(stamp.decode(0), datetime.datetime)
    field = co.Field(primary_key=True, name="user_id", codec=co.Timestamp("s"))
    assert_type(field.primary_key, bool)


def check_failure_reports() -> None:
    try:
        co.Repository(User).update_with(1, lambda u: u)
    except co.ConflictError as exc:
        assert_type(exc.attempts, int)
    except co.BatchWriteError as exc:
        assert_type(exc.written, list[str])
        assert_type(exc.not_written, list[str])
        assert_type(exc.unknown, list[str])
    except co.OutcomeUnknown as exc:
        assert_type(exc.server, str | None)
    co.Field(primary_key=True, hash_tag=True)
    co.PickleSerializer(signing_key=b"0123456789abcdef")
    co.JSONSerializer(allow_nan=False)


def check_field_codecs() -> None:
    import decimal
    import uuid

    money: co.Codec[decimal.Decimal] = co.DecimalCodec(places=2, rounding=decimal.ROUND_HALF_UP)
    assert_type(money.decode("9.50"), decimal.Decimal)
    assert_type(co.DecimalCodec(2).encode(decimal.Decimal("9.5")), str)
    assert_type(co.DecimalCodec(0, max_digits=12).encode(7), str)
    assert_type(co.DecimalCodec(2).places, int)
    assert_type(co.DecimalCodec(2).rounding, str | None)
    short: co.Codec[uuid.UUID] = co.ShortUUIDCodec()
    assert_type(short.decode("MLpZDiEXM4VsUryR9oE8uc"), uuid.UUID)
    assert_type(co.ShortUUIDCodec().encode(uuid.uuid4()), str)
    assert_type(co.ShortUUIDCodec.alphabet, str)
    utc: co.Codec[datetime.datetime] = co.UTCDateTimeCodec()
    assert_type(utc.decode("2024-05-06T07:08:09.000000+00:00"), datetime.datetime)
    assert_type(co.UTCDateTimeCodec().encode(datetime.datetime.now(datetime.timezone.utc)), str)
    co.ShortUUIDCodec().encode("MLpZDiEXM4VsUryR9oE8uc")  # type: ignore[arg-type]
    co.DecimalCodec(2).encode(1.5)  # type: ignore[arg-type]
    co.UTCDateTimeCodec().encode(datetime.date(2024, 5, 6))  # type: ignore[arg-type]
    wrong: co.Codec[datetime.datetime] = co.ShortUUIDCodec()  # type: ignore[assignment]
    assert_type(wrong, co.Codec[datetime.datetime])
    co.Field(primary_key=True, codec=co.ShortUUIDCodec())


@dataclasses.dataclass
class Company:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str


@dataclasses.dataclass
class Member:
    id: Annotated[int, co.Field(primary_key=True)]
    company_id: Annotated[int | None, co.Ref(Company)] = None
    manager_id: Annotated[int | None, co.Ref("Member")] = None
    friend_ids: Annotated[list[int], co.Ref("Member")] = dataclasses.field(default_factory=list)


def check_references() -> None:
    from typing import Any

    companies = co.Repository(Company)
    members = co.Repository(Member)
    page = members.get_many([1, 2])
    assert_type(co.Ref(Company), co.Ref)
    assert_type(co.Ref("Company").target, type | str)
    employers = members.load_related(page, "company_id", companies)
    assert_type(employers, dict[Any, Company])
    assert_type(
        members.load_related(page, "manager_id", members, missing="raise"), dict[Any, Member]
    )
    maybe = members.load_related(page, ["manager_id", "friend_ids"], members, missing="none")
    assert_type(maybe, dict[Any, Member | None])
    # The next level of a nested preload takes the previous level's values, Nones included.
    assert_type(members.load_related(maybe.values(), "company_id", companies), dict[Any, Company])
    members.load_related(page, "company_id", companies, missing="skip")  # type: ignore[call-overload]
    members.load_related([Company(1, "x")], "company_id", companies)  # type: ignore[list-item]


def check_ttl_and_namespace_operations() -> None:
    from collections.abc import Iterator

    companies = co.Repository(Company, ttl=60)
    assert_type(companies.touch(1), bool)
    assert_type(companies.touch(1, ttl=None), bool)
    assert_type(companies.touch_many([1, 2], ttl=datetime.timedelta(minutes=5)), list[bool])
    assert_type(companies.ttl_of(1), float | None)
    assert_type(companies.clear(), int)
    assert_type(companies.count(batch=100), int)
    assert_type(companies.scan(), Iterator[Company])
    assert_type(companies.scan(batch=50, errors="skip"), Iterator[Company])
    companies.scan(errors="ignore")  # type: ignore[arg-type]
    generational = co.Repository(Company, ttl=60, generations=True, generation_ttl=0.5)
    assert_type(generational, co.Repository[Company])
    assert_type(generational.clear(), int)
    co.Repository(Company, generations="yes")  # type: ignore[arg-type]
    companies.touch(1, ttl="soon")  # type: ignore[arg-type]
    store = co.MemoryBackend()
    hits = co.Counter(store, "hits", ttl=datetime.timedelta(hours=1))
    assert_type(hits.incr(), int)
    assert_type(hits.decr(2), int)
    assert_type(hits.get(), int)
    assert_type(hits.reset(), bool)
    assert_type(hits.key, str)
    assert_type(hits.ttl, float | None)
    hits.incr("1")  # type: ignore[arg-type]
    check_capabilities(store)
    tb: co.TTLBackend = co.RedisBackend.from_url("redis://127.0.0.1:6379")
    cb: co.CounterBackend = co.MemcachedBackend.from_servers("127.0.0.1:11211")
    sb: co.ScanBackend = co.FileSystemBackend("/tmp/x")
    no_scan: co.ScanBackend = co.MemcachedBackend.from_servers("127.0.0.1:11211")  # type: ignore[assignment]
    print(tb, cb, sb, no_scan)


def check_capabilities(backend: co.Backend) -> None:
    from collections.abc import Iterator

    if isinstance(backend, co.TTLBackend):
        assert_type(backend.ttl_of("k"), float | None)
        assert_type(backend.touch_many(["k"], 5.0), list[bool])
    if isinstance(backend, co.CounterBackend):
        assert_type(backend.counter_add("k", -1, None), int)
    if isinstance(backend, co.ScanBackend):
        assert_type(backend.scan("user:", 100), Iterator[list[str]])


def check_signals() -> None:
    from collections.abc import Callable
    from typing import Any

    users = co.Repository(User)
    assert_type(users.signals, co.RepositorySignals[User])
    assert_type(users.signals.pre_save, co.Signal[User])

    @users.signals.pre_save.connect
    def stamp(event: co.WriteEvent[User]) -> None:
        assert_type(event.record, User)
        assert_type(event.records, tuple[User, ...])
        assert_type(event.keys, tuple[str | None, ...])
        assert_type(event.repository, co.Repository[User] | co.AsyncRepository[User])
        assert_type(event.model, type[User])
        assert_type(event.deleted, int | None)

    # A lambda's parameter is inferred from the repository's model.
    users.signals.post_update.connect(lambda event: assert_type(event.record, User))
    receivers = users.signals.post_delete.receivers
    assert_type(receivers, tuple[Callable[[co.WriteEvent[User]], object], ...])

    def on_company(event: co.WriteEvent[Company]) -> None: ...

    users.signals.post_save.connect(on_company)  # type: ignore[arg-type]
    co.signals.pre_save.connect(stamp, model=User)
    co.signals.pre_save.connect(on_company, model=User)  # type: ignore[arg-type]

    def audit(event: co.WriteEvent[Any]) -> None: ...

    co.signals.post_delete.connect(audit)
    assert_type(co.signals, co.ModelSignals)
    error = co.PostSignalError.__new__(co.PostSignalError)
    assert_type(error.event, co.WriteEvent[Any])
    assert_type(error.errors, tuple[Exception, ...])


@dataclasses.dataclass
class Renamed:
    id: Annotated[int, co.Field(primary_key=True)]
    full_name: Annotated[str, co.Field(aliases=("name",))]


def check_schema_evolution() -> None:
    def to_v2(stored: dict[str, object]) -> dict[str, object]:
        return stored

    repo = co.Repository(
        Renamed,
        version=2,
        upgrades={1: to_v2},
        newer="ignore",
        read_also=["json", co.MsgpackSerializer()],
        rewrite_on_read=True,
    )
    assert_type(repo, co.Repository[Renamed])
    report = repo.migrate(batch=100, progress=lambda r: print(r.scanned))
    assert_type(report, co.MigrationReport)
    assert_type(report.rewritten, int)
    assert_type(report.failures, list[tuple[str, str]])
    co.Repository(Renamed, newer="warn")  # type: ignore[arg-type]
    co.Repository(Renamed, version="2")  # type: ignore[arg-type]
    co.Field(aliases=["name"])  # type: ignore[arg-type]


async def check_async_repository_types() -> None:
    users = co.AsyncRepository(User, serializer="json", ttl=3600)
    assert_type(users, co.AsyncRepository[User])
    assert_type(users.backend, co.AsyncBackend)
    assert_type(users.model, type[User])
    assert_type(await users.get(1), User)
    assert_type(await users.get_or_none(1), User | None)
    assert_type(await users.get_many([1, 2, 3]), list[User | None])
    assert_type(await users.exists(1), bool)
    assert_type(await users.create(User(id=1, name="Sam")), User)
    assert_type(await users.save(User(id=1, name="Sam"), ttl=co.DEFAULT), User)
    assert_type(await users.update(User(id=1, name="Sam"), ttl=co.KEEP_TTL), User)
    assert_type(await users.get_or_create(User(id=1, name="Sam")), tuple[User, bool])
    assert_type(await users.update_with(1, lambda u: u), User)

    async def rename(user: User) -> User:
        return dataclasses.replace(user, name="Max")

    assert_type(await users.update_with(1, rename), User)
    assert_type(await users.patch(1, name="Max"), User)

    async def load() -> User:
        return User(id=1, name="Sam")

    assert_type(await users.get_or_load(1, load), User)
    assert_type(await users.get_or_load(1, lambda: User(id=1, name="Sam")), User)

    async def load_many(pks: list[object]) -> list[User]:
        return [User(id=1, name="Sam")]

    assert_type(await users.get_or_load_many([1], load_many), list[User | None])
    assert_type(await users.delete(1), bool)
    assert_type(await users.delete_many([1]), int)
    assert_type(await users.create_many([User(id=1, name="Sam")]), list[User])
    assert_type(await users.save_many([User(id=1, name="Sam")]), list[User])
    assert_type(await users.update_many([User(id=1, name="Sam")]), list[User])
    assert_type(users.key_for(1), str)
    async with co.AsyncRepository(User, backend=co.AsyncMemoryBackend()) as owned:
        assert_type(owned, co.AsyncRepository[User])
    await users.aclose()
