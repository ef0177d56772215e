"""Code as a user writes it, type-checked against the *installed* wheel.

``nox -s typing_installed`` builds the wheel, installs it (not editable) and
runs ``mypy --strict`` and basedpyright (strict) over this file from a
directory where ``src/`` cannot be imported, so the types checked are the ones
a ``pip install cacheorm`` user gets. Every ``assert_type`` must hold under both
checkers; every ``# type: ignore`` must be needed (both report unused ones).
The file is only type-checked, never run: nothing here connects anywhere.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from typing_extensions import assert_type

import cacheorm as co


@dataclasses.dataclass(frozen=True)
class User:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    email: str | None = None


@dataclasses.dataclass(frozen=True)
class Membership:
    team: Annotated[str, co.Field(primary_key=True)]
    user: Annotated[int, co.Field(primary_key=True)]
    since: Annotated[datetime.datetime, co.Field(codec=co.Timestamp("s"))]


@dataclasses.dataclass(frozen=True)
class Post:
    id: Annotated[int, co.Field(primary_key=True)]
    author_id: Annotated[int, co.Ref(User)]


def rename(user: User) -> User:
    return dataclasses.replace(user, name=user.name.title())


def load_user() -> User:
    return User(id=1, name="Sam")


def repository_methods(backend: co.Backend) -> None:
    users = co.Repository(User, backend=backend, serializer="json", prefix="app:", ttl=3600)
    assert_type(users, co.Repository[User])
    assert_type(users.model, type[User])
    assert_type(users.backend, co.Backend)
    assert_type(users.get(1), User)
    assert_type(users.get_or_none(1), User | None)
    assert_type(users.get_many([1, 2, 3]), list[User | None])
    assert_type(users.get_or_create(User(id=1, name="Sam")), tuple[User, bool])
    assert_type(users.create(User(id=1, name="Sam")), User)
    assert_type(users.save(User(id=1, name="Sam"), ttl=co.DEFAULT), User)
    assert_type(users.update(User(id=1, name="Sam"), ttl=None), User)
    assert_type(users.create_many([User(id=2, name="Ann")]), list[User])
    assert_type(users.exists(1), bool)
    assert_type(users.delete(1), bool)
    assert_type(users.delete_many([1, 2]), int)
    assert_type(users.key_for(1), str)

    # update_with takes a Callable[[User], User]: a lambda's parameter is a User ...
    assert_type(
        users.update_with(1, lambda u: dataclasses.replace(assert_type(u, User), name="Max")),
        User,
    )
    callback: Callable[[User], User] = rename
    assert_type(users.update_with(1, callback, ttl=60), User)
    # ... and a callback returning anything else is rejected.
    users.update_with(1, lambda u: u.name)  # type: ignore[arg-type,return-value]

    assert_type(users.patch(1, name="Max"), User)
    assert_type(users.patch(1, {"email": None}, ttl=datetime.timedelta(hours=1)), User)
    assert_type(users.get_or_load(1, load_user, ttl=60), User)
    assert_type(users.get_or_load(1, lambda: User(id=1, name="Sam")), User)
    assert_type(
        users.get_or_load_many([1, 2], lambda pks: [User(id=pk, name="") for pk in pks]),
        list[User | None],
    )
    users.get_or_load(1, lambda: "not a user")  # type: ignore[arg-type,return-value]

    members = co.Repository(Membership, backend=backend, key="team.{team}.{user}")
    assert_type(members, co.Repository[Membership])
    assert_type(members.get(("core", 1)), Membership)


def backends(directory: str) -> None:
    assert_type(co.MemoryBackend(), co.MemoryBackend)
    assert_type(co.MemoryBackend(max_entries=1_000), co.MemoryBackend)
    assert_type(co.FileSystemBackend(directory), co.FileSystemBackend)
    assert_type(co.RedisBackend.from_url("redis://127.0.0.1:6379/0"), co.RedisBackend)
    assert_type(co.RedisBackend.from_url("redis://127.0.0.1:7000", cluster=True), co.RedisBackend)
    assert_type(co.RedisBackend.from_cluster(["127.0.0.1:7000"]), co.RedisBackend)
    assert_type(co.MemcachedBackend.from_servers("127.0.0.1:11211"), co.MemcachedBackend)
    assert_type(
        co.MemcachedBackend.from_servers(["127.0.0.1:11211", "127.0.0.1:11212"]),
        co.MemcachedBackend,
    )

    stores: list[co.Backend] = [co.MemoryBackend(), co.FileSystemBackend(directory)]
    assert_type(stores, list[co.Backend])


def newer_api(backend: co.Backend) -> None:
    users = co.Repository(User, backend=backend)
    posts = co.Repository(Post, backend=backend)
    assert_type(posts.load_related(posts.get_many([1, 2]), "author_id", users), dict[Any, User])
    assert_type(
        posts.load_related(posts.get_many([1]), "author_id", users, missing="none"),
        dict[Any, User | None],
    )
    assert_type(users.update(User(id=1, name="Sam"), ttl=co.KEEP_TTL), User)
    assert_type(users.touch(1, ttl=60), bool)
    assert_type(users.ttl_of(1), float | None)
    assert_type(users.count(), int)
    assert_type(users.scan(), Iterator[User])
    cleared = co.Repository(User, backend=backend, ttl=60, generations=True, generation_ttl=0.5)
    assert_type(cleared.clear(), int)
    assert_type(co.Counter(backend, "hits", ttl=60).incr(), int)

    @users.signals.pre_save.connect
    def audit(event: co.WriteEvent[User]) -> None:
        assert_type(event.records, tuple[User, ...])

    def observe(event: co.OperationEvent) -> None:
        assert_type(event.duration, float)

    with co.Repository(User, hooks=[observe]) as owned:
        assert_type(owned, co.Repository[User])


def backend_protocol(store: co.Backend) -> None:
    assert_type(store.get("k"), bytes | None)
    assert_type(store.get_many(["k"]), list[bytes | None])
    assert_type(store.incr("n", 2), int)
    store.close()


def errors(users: co.Repository[User]) -> None:
    try:
        users.get(1)
    except co.NotFound as exc:
        assert_type(exc.key, str | None)
        assert_type(exc.model, type | None)
    except co.DeserializationError as exc:
        assert_type(exc, co.DeserializationError)
