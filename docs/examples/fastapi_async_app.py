"""FastAPI recipe, async: the lifespan owns an async backend, ``Depends`` gives the repository.

``create_app()`` builds the application. Its lifespan opens the backend when
the application starts and closes it when it stops; endpoints are ``async def``
and get the repository through ``Depends``. Run it with
``REDIS_URL=redis://localhost:6379/0 uvicorn fastapi_async_app:app``; tests
build ``create_app(co.AsyncMemoryBackend)`` and need no server.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse

import cacheorm as co


@dataclasses.dataclass
class User:
    """A user profile, cached for an hour."""

    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    visits: int = 0


class State(TypedDict):
    """What the lifespan hands to every request (``request.state``)."""

    users: co.AsyncRepository[User]


def redis_from_env() -> co.AsyncBackend:
    """The production backend: Redis at ``REDIS_URL``, one pipelined connection."""
    return co.AsyncRedisBackend.from_url(
        os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
        timeout=1.0,  # a slow cache must not stall requests for 5 s
    )


def get_users(request: Request) -> co.AsyncRepository[User]:
    """The users repository of the running application."""
    users: co.AsyncRepository[User] = request.state.users
    return users


Users = Annotated[co.AsyncRepository[User], Depends(get_users)]

router = APIRouter()


@router.post("/users", status_code=201)
async def create_user(user: User, users: Users) -> User:
    """Create a user; 409 if the id is taken."""
    try:
        return await users.create(user)
    except co.AlreadyExists:
        raise HTTPException(409, f"user {user.id} exists") from None


@router.get("/users")
async def read_users(users: Users, ids: Annotated[list[int], Query()]) -> list[User | None]:
    """Read several users in one round trip; ``null`` for each id that has none."""
    return await users.get_many(ids)


@router.get("/users/{user_id}")
async def read_user(user_id: int, users: Users) -> User:
    """Read a user; 404 if there is none."""
    try:
        return await users.get(user_id)
    except co.NotFound:
        raise HTTPException(404, f"no user {user_id}") from None


@router.post("/users/{user_id}/visits")
async def count_visit(user_id: int, users: Users) -> User:
    """Add one visit, atomically: concurrent requests lose no count."""
    try:
        return await users.update_with(
            user_id, lambda user: dataclasses.replace(user, visits=user.visits + 1)
        )
    except co.NotFound:
        raise HTTPException(404, f"no user {user_id}") from None


@router.patch("/users/{user_id}")
async def patch_user(user_id: int, changes: dict[str, Any], users: Users) -> User:
    """Set some fields, atomically; 422 for an unknown field or a bad value."""
    try:
        return await users.patch(user_id, changes)
    except co.NotFound:
        raise HTTPException(404, f"no user {user_id}") from None
    except co.ValidationError as exc:
        raise HTTPException(422, str(exc)) from None


async def cache_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 when the cache cannot be reached (or did not answer in time)."""
    return JSONResponse({"detail": f"cache unavailable: {exc}"}, status_code=503)


def create_app(make_backend: Callable[[], co.AsyncBackend] = redis_from_env) -> FastAPI:
    """The application; ``make_backend`` builds its backend when the application starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[State, None]:
        """Open the backend and build the repositories at start-up; close it at shutdown."""
        backend = make_backend()
        try:
            yield {"users": co.AsyncRepository(User, backend=backend, prefix="app:", ttl=3600)}
        finally:
            await backend.aclose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    app.add_exception_handler(co.BackendUnavailable, cache_unavailable)
    return app


app = create_app()
