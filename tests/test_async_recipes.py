"""The async FastAPI recipe in docs/examples/ works, on AsyncMemoryBackend and on real Redis."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import cacheorm as co
from tests.docs_examples.collect import ROOT
from tests.servers import RedisServer, closed_port

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

MakeBackend = Callable[[], co.AsyncBackend]


@pytest.fixture
def recipe() -> Iterator[types.ModuleType]:
    """A fresh import of docs/examples/fastapi_async_app.py."""
    name = "cacheorm_recipe_fastapi_async_app"
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "docs" / "examples" / "fastapi_async_app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[name]


class Built:
    """Builds the application's backends and records which were closed."""

    def __init__(self, make: MakeBackend) -> None:
        self.make = make
        self.backends: list[co.AsyncBackend] = []
        self.closed: list[co.AsyncBackend] = []

    def __call__(self) -> co.AsyncBackend:
        backend = self.make()
        original = backend.aclose

        async def aclose() -> None:
            self.closed.append(backend)
            await original()

        backend.aclose = aclose  # type: ignore[method-assign]
        self.backends.append(backend)
        return backend


@pytest.fixture(params=["memory", "redis"])
def built(
    request: pytest.FixtureRequest, recipe: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> Built:
    """The recipe's backend factory on each store: AsyncMemoryBackend, or Redis at REDIS_URL."""
    if request.param == "memory":
        return Built(co.AsyncMemoryBackend)
    request.getfixturevalue("redis_backend")  # flushes the database
    server: RedisServer = request.getfixturevalue("redis_server")
    monkeypatch.setenv("REDIS_URL", server.url)
    return Built(recipe.redis_from_env)


def test_async_recipe_serves_every_endpoint(recipe: types.ModuleType, built: Built) -> None:
    """Create, conflict, read, batch read, count visits, patch and miss; shutdown closes it."""
    with TestClient(recipe.create_app(built)) as client:
        assert len(built.backends) == 1
        assert client.post("/users", json={"id": 1, "name": "Sam"}).status_code == 201
        conflict = client.post("/users", json={"id": 1, "name": "Other"})
        assert (conflict.status_code, conflict.json()) == (409, {"detail": "user 1 exists"})
        assert client.post("/users", json={"id": "x", "name": 1}).status_code == 422
        assert client.get("/users/1").json() == {"id": 1, "name": "Sam", "visits": 0}
        assert client.get("/users/2").status_code == 404
        for expected in (1, 2, 3):
            assert client.post("/users/1/visits").json()["visits"] == expected
        assert client.post("/users/2/visits").status_code == 404
        patched = client.patch("/users/1", json={"name": "Samuel"})
        assert patched.json() == {"id": 1, "name": "Samuel", "visits": 3}
        bad_field = client.patch("/users/1", json={"nickname": "S"})
        assert bad_field.status_code == 422
        assert "nickname" in bad_field.json()["detail"]
        assert client.patch("/users/1", json={"visits": "many"}).status_code == 422
        assert client.patch("/users/9", json={"name": "X"}).status_code == 404
        client.post("/users", json={"id": 3, "name": "Ada"})
        many = client.get("/users", params={"ids": [3, 2, 1]})
        assert many.json() == [
            {"id": 3, "name": "Ada", "visits": 0},
            None,
            {"id": 1, "name": "Samuel", "visits": 3},
        ]
        assert built.closed == []
    assert built.closed == built.backends


def test_async_recipe_counts_concurrent_visits_exactly(
    recipe: types.ModuleType, built: Built
) -> None:
    """60 concurrent visit requests on one user end at exactly 60 (update_with under CAS)."""
    with TestClient(recipe.create_app(built)) as client:
        client.post("/users", json={"id": 5, "name": "Kim"})
        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(lambda _: client.post("/users/5/visits").status_code, range(60)))
        assert codes == [200] * 60
        assert client.get("/users/5").json()["visits"] == 60


def test_async_recipe_shares_records_with_sync_code(
    recipe: types.ModuleType,
    redis_backend: co.RedisBackend,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app's records are the sync Repository's: same key, bytes and TTL, both ways."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    sync_users = co.Repository(recipe.User, backend=redis_backend, prefix="app:", ttl=3600)
    with TestClient(recipe.app) as client:
        assert client.post("/users", json={"id": 1, "name": "Sam"}).status_code == 201
        assert redis_backend.get("app:user:1") == b'{"id":1,"name":"Sam","visits":0}'
        assert 3500 < redis_backend.client.ttl("app:user:1") <= 3600
        assert sync_users.get(1) == recipe.User(1, "Sam")
        sync_users.update_with(1, lambda user: recipe.User(user.id, user.name, visits=41))
        assert client.post("/users/1/visits").json()["visits"] == 42
        sync_users.save(recipe.User(2, "Kim"))
        assert client.get("/users/2").json() == {"id": 2, "name": "Kim", "visits": 0}
    assert sync_users.get(1) == recipe.User(1, "Sam", visits=42)
    assert 3500 < redis_backend.client.ttl("app:user:1") <= 3600  # the visits kept the TTL


def test_async_recipe_answers_503_when_redis_is_down(
    recipe: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing listening at REDIS_URL, requests get 503 naming the problem, at once."""
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    with TestClient(recipe.create_app()) as client:
        response = client.get("/users/1")
        assert response.status_code == 503
        assert response.json()["detail"].startswith("cache unavailable: ")
        assert client.post("/users", json={"id": 1, "name": "Sam"}).status_code == 503


def test_async_recipe_takes_an_in_memory_repository_in_tests(
    recipe: types.ModuleType,
    redis_backend: co.RedisBackend,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dependency_overrides swaps in an AsyncRepository on memory; Redis is never written."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    memory_users = co.AsyncRepository(recipe.User)
    recipe.app.dependency_overrides[recipe.get_users] = lambda: memory_users
    with TestClient(recipe.app) as client:
        assert client.post("/users", json={"id": 7, "name": "Kim"}).status_code == 201
        assert client.post("/users/7/visits").json()["visits"] == 1
        assert client.get("/users/7").json() == {"id": 7, "name": "Kim", "visits": 1}
    assert redis_backend.client.dbsize() == 0
    assert asyncio.run(memory_users.get(7)) == recipe.User(7, "Kim", visits=1)
