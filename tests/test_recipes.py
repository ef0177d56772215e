"""The DI recipes in docs/examples/ work, through FastAPI's test client, on real Redis."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import cacheorm as co
from tests.docs_examples.collect import ROOT
from tests.servers import RedisServer

pytest.importorskip("fastapi")
pytest.importorskip("svcs")
from fastapi.testclient import TestClient

LoadRecipe = Callable[[str], types.ModuleType]


@pytest.fixture
def load_recipe(
    redis_backend: co.RedisBackend, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LoadRecipe]:
    """Import a fresh docs/examples/<name>.py with REDIS_URL set to this session's server."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    loaded: list[str] = []

    def load(name: str) -> types.ModuleType:
        module_name = f"cacheorm_recipe_{name}"
        spec = importlib.util.spec_from_file_location(
            module_name, ROOT / "docs" / "examples" / f"{name}.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        loaded.append(module_name)
        spec.loader.exec_module(module)
        return module

    yield load
    for module_name in loaded:
        del sys.modules[module_name]


@pytest.fixture
def closes(monkeypatch: pytest.MonkeyPatch) -> list[co.RedisBackend]:
    """The RedisBackends closed during the test, in order."""
    closed: list[co.RedisBackend] = []
    original = co.RedisBackend.close

    def close(self: co.RedisBackend) -> None:
        closed.append(self)
        original(self)

    monkeypatch.setattr(co.RedisBackend, "close", close)
    return closed


def test_depends_recipe_stores_users_in_redis(
    load_recipe: LoadRecipe, redis_backend: co.RedisBackend
) -> None:
    """Create, conflict, read, miss and count visits; the records are in Redis under app:."""
    recipe = load_recipe("fastapi_depends")
    try:
        with TestClient(recipe.app) as client:
            assert client.post("/users", json={"id": 1, "name": "Sam"}).status_code == 201
            conflict = client.post("/users", json={"id": 1, "name": "Other"})
            assert conflict.status_code == 409
            assert client.get("/users/1").json() == {"id": 1, "name": "Sam", "visits": 0}
            assert client.get("/users/2").status_code == 404
            assert client.post("/users/2/visits").status_code == 404
            assert client.post("/users", json={"id": "x", "name": 1}).status_code == 422
        raw = redis_backend.get("app:user:1")
        assert raw == b'{"id":1,"name":"Sam","visits":0}'
        assert 3500 < redis_backend.client.ttl("app:user:1") <= 3600
    finally:
        recipe.get_backend().close()


def test_depends_recipe_counts_concurrent_visits_exactly(
    load_recipe: LoadRecipe, redis_backend: co.RedisBackend
) -> None:
    """40 concurrent visit requests on one user end at exactly 40 (update_with under CAS)."""
    recipe = load_recipe("fastapi_depends")
    try:
        with TestClient(recipe.app) as client:
            client.post("/users", json={"id": 5, "name": "Kim"})
            with ThreadPoolExecutor(8) as pool:
                codes = list(
                    pool.map(lambda _: client.post("/users/5/visits").status_code, range(40))
                )
            assert codes == [200] * 40
            assert client.get("/users/5").json()["visits"] == 40
    finally:
        recipe.get_backend().close()


def test_depends_recipe_takes_an_in_memory_repository_in_tests(load_recipe: LoadRecipe) -> None:
    """dependency_overrides swaps in a MemoryBackend repository; Redis is never written."""
    recipe = load_recipe("fastapi_depends")
    memory_users = co.Repository(recipe.User)
    recipe.app.dependency_overrides[recipe.get_users] = lambda: memory_users
    with TestClient(recipe.app) as client:
        assert client.post("/users", json={"id": 7, "name": "Kim"}).status_code == 201
    assert memory_users.get(7) == recipe.User(7, "Kim")
    assert recipe.get_backend.cache_info().currsize == 0  # no Redis backend was built


def test_lifespan_recipe_owns_the_backend(
    load_recipe: LoadRecipe, redis_backend: co.RedisBackend, closes: list[co.RedisBackend]
) -> None:
    """The backend is built at start-up, serves put/patch/get, and is closed at shutdown."""
    recipe = load_recipe("fastapi_lifespan")
    with TestClient(recipe.app) as client:
        assert client.put("/users/1", json={"id": 1, "name": "Sam"}).status_code == 200
        assert client.put("/users/2", json={"id": 1, "name": "Sam"}).status_code == 422
        patched = client.patch("/users/1", json={"visits": 5, "name": "Samuel"})
        assert patched.json() == {"id": 1, "name": "Samuel", "visits": 5}
        bad_field = client.patch("/users/1", json={"nickname": "S"})
        assert bad_field.status_code == 422
        assert "nickname" in bad_field.json()["detail"]
        assert client.patch("/users/1", json={"visits": "many"}).status_code == 422
        assert client.patch("/users/9", json={"name": "X"}).status_code == 404
        assert client.get("/users/9").status_code == 404
        assert closes == []
    assert len(closes) == 1
    stored = co.Repository(recipe.User, backend=redis_backend, prefix="app:")
    assert stored.get(1) == recipe.User(1, "Samuel", 5)


def test_svcs_recipe_serves_users_and_closes_the_backend(
    load_recipe: LoadRecipe, redis_backend: co.RedisBackend, closes: list[co.RedisBackend]
) -> None:
    """The registry hands out the repository, /healthy pings Redis, shutdown closes it."""
    recipe = load_recipe("svcs_app")
    with TestClient(recipe.app) as client:
        assert client.post("/users", json={"id": 1, "name": "Sam"}).status_code == 201
        assert client.post("/users", json={"id": 1, "name": "Sam"}).status_code == 409
        assert client.get("/users/1").json() == {"id": 1, "name": "Sam", "visits": 0}
        assert client.get("/users/3").status_code == 404
        health = client.get("/healthy")
        assert (health.status_code, health.json()) == (200, {"failing": {}})
    assert len(closes) == 1
    assert redis_backend.get("svcs:user:1") == b'{"id":1,"name":"Sam","visits":0}'


def test_svcs_recipe_reports_a_dead_redis_as_unhealthy(
    load_recipe: LoadRecipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing listening at REDIS_URL, /healthy answers 500 naming the repository."""
    from tests.servers import closed_port

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    recipe = load_recipe("svcs_app")
    with TestClient(recipe.app) as client:
        health = client.get("/healthy")
    assert health.status_code == 500
    failing: dict[str, Any] = health.json()["failing"]
    assert list(failing) == [f"{recipe.__name__}.UserRepository"]
    assert "BackendUnavailable" in failing[f"{recipe.__name__}.UserRepository"]


def test_svcs_recipe_takes_an_in_memory_repository_in_tests(load_recipe: LoadRecipe) -> None:
    """Registering another value on the running app's registry replaces the Redis repository."""
    svcs_fastapi = pytest.importorskip("svcs.fastapi")
    recipe = load_recipe("svcs_app")
    memory_users = recipe.UserRepository(recipe.User)
    with TestClient(recipe.app) as client:
        svcs_fastapi.get_registry(client).register_value(recipe.UserRepository, memory_users)
        assert client.post("/users", json={"id": 4, "name": "Ada"}).status_code == 201
    assert memory_users.get(4) == recipe.User(4, "Ada")
