"""FastAPI recipe: the application's lifespan owns the backend.

The backend is built when the application starts and closed when it stops;
endpoints get the repository through ``Depends`` from the lifespan's state.
Run it with ``REDIS_URL=redis://localhost:6379/0 uvicorn fastapi_lifespan:app``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

from fastapi import Depends, FastAPI, HTTPException, Request

import cacheorm as co


@dataclasses.dataclass
class User:
    """A user profile, cached for an hour."""

    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    visits: int = 0


class State(TypedDict):
    """What the lifespan hands to every request (``request.state``)."""

    users: co.Repository[User]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    """Build the backend and the repositories at start-up; close the backend at shutdown."""
    backend = co.RedisBackend.from_url(
        os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
        socket_timeout=1.0,  # a slow cache must not stall requests for 5 s
    )
    try:
        yield {"users": co.Repository(User, backend=backend, prefix="app:", ttl=3600)}
    finally:
        backend.close()


def get_users(request: Request) -> co.Repository[User]:
    """The users repository of the running application."""
    users: co.Repository[User] = request.state.users
    return users


Users = Annotated[co.Repository[User], Depends(get_users)]

app = FastAPI(lifespan=lifespan)


@app.put("/users/{user_id}")
def put_user(user_id: int, user: User, users: Users) -> User:
    """Store a user (upsert); the path and the body must agree."""
    if user.id != user_id:
        raise HTTPException(422, "the id in the path and in the body differ")
    return users.save(user)


@app.get("/users/{user_id}")
def read_user(user_id: int, users: Users) -> User:
    """Read a user; 404 if there is none."""
    try:
        return users.get(user_id)
    except co.NotFound:
        raise HTTPException(404, f"no user {user_id}") from None


@app.patch("/users/{user_id}")
def patch_user(user_id: int, changes: dict[str, Any], users: Users) -> User:
    """Set some fields, atomically; 422 for an unknown field or a bad value."""
    try:
        return users.patch(user_id, changes)
    except co.NotFound:
        raise HTTPException(404, f"no user {user_id}") from None
    except co.ValidationError as exc:
        raise HTTPException(422, str(exc)) from None
