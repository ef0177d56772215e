"""svcs recipe: the registry owns the backend; requests get repositories from a container.

svcs (https://svcs.hynek.me) is a service locator. Its FastAPI integration
gives every request a container, closes the registry (and so the backend)
when the application stops, and reports health through the services' pings.
Run it with ``REDIS_URL=redis://localhost:6379/0 uvicorn svcs_app:app``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncGenerator
from typing import Annotated

import svcs
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

import cacheorm as co


@dataclasses.dataclass
class User:
    """A user profile, cached for an hour."""

    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    visits: int = 0


class UserRepository(co.Repository[User]):
    """The users repository, a type of its own so svcs can look it up."""


@svcs.fastapi.lifespan
async def lifespan(app: FastAPI, registry: svcs.Registry) -> AsyncGenerator[None, None]:
    """Register the repository; the registry closes its backend when the app stops."""
    backend = co.RedisBackend.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    registry.register_value(
        UserRepository,
        UserRepository(User, backend=backend, prefix="svcs:", ttl=3600),
        ping=lambda users: users.exists(0),  # one round trip to the server
        on_registry_close=backend.close,
    )
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/users", status_code=201)
def create_user(user: User, services: svcs.fastapi.DepContainer) -> User:
    """Create a user; 409 if the id is taken."""
    users = services.get(UserRepository)
    try:
        return users.create(user)
    except co.AlreadyExists:
        raise HTTPException(409, f"user {user.id} exists") from None


@app.get("/users/{user_id}")
def read_user(user_id: int, services: svcs.fastapi.DepContainer) -> User:
    """Read a user; 404 if there is none."""
    try:
        return services.get(UserRepository).get(user_id)
    except co.NotFound:
        raise HTTPException(404, f"no user {user_id}") from None


@app.get("/healthy")
async def healthy(services: svcs.fastapi.DepContainer) -> JSONResponse:
    """200 if every registered service answers its ping, else 500 naming the failures."""
    failing = {}
    for ping in services.get_pings():
        try:
            await ping.aping()
        except Exception as exc:
            failing[ping.name] = repr(exc)
    return JSONResponse({"failing": failing}, status_code=500 if failing else 200)
