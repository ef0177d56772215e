"""FastAPI recipe: repositories through ``Depends``, the backend built once per process.

Run it with ``REDIS_URL=redis://localhost:6379/0 uvicorn fastapi_depends:app``.
Tests swap the repository for an in-memory one with
``app.dependency_overrides[get_users] = ...``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException

import cacheorm as co


@dataclasses.dataclass
class User:
    """A user profile, cached for an hour."""

    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    visits: int = 0


@functools.cache
def get_backend() -> co.Backend:
    """One backend per process, built on first use (redis-py connects lazily)."""
    return co.RedisBackend.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))


@functools.cache
def get_users() -> co.Repository[User]:
    """The users repository: built once, since building one compiles the model's codecs."""
    return co.Repository(User, backend=get_backend(), prefix="app:", ttl=3600)


Users = Annotated[co.Repository[User], Depends(get_users)]

app = FastAPI()


@app.post("/users", status_code=201)
def create_user(user: User, users: Users) -> User:
    """Create a user; 409 if the id is taken."""
    try:
        return users.create(user)
    except co.AlreadyExists:
        raise HTTPException(409, f"user {user.id} exists") from None


@app.get("/users/{user_id}")
def read_user(user_id: int, users: Users) -> User:
    """Read a user; 404 if there is none."""
    try:
        return users.get(user_id)
    except co.NotFound:
        raise HTTPException(404, f"no user {user_id}") from None


@app.post("/users/{user_id}/visits")
def count_visit(user_id: int, users: Users) -> User:
    """Add one visit, atomically: concurrent requests lose no count."""
    try:
        return users.update_with(user_id, lambda u: dataclasses.replace(u, visits=u.visits + 1))
    except co.NotFound:
        raise HTTPException(404, f"no user {user_id}") from None
