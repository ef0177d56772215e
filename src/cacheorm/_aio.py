"""What every async part of cacheorm needs from the event loop: asyncio, running."""

from __future__ import annotations

import asyncio

from cacheorm._errors import ConfigurationError

__all__ = ["require_asyncio"]


def require_asyncio(what: str) -> asyncio.AbstractEventLoop:
    """The running asyncio event loop, or a clear error naming ``what`` needed it.

    cacheorm's async backends run on asyncio; any asyncio event loop works,
    uvloop's included. Under trio (or with no event loop at all) there is no
    running asyncio loop, and calling them would fail deep inside asyncio with
    a bare ``RuntimeError``; this says what to do instead.

    Args:
        what: the class or call that needs asyncio, named in the error.

    Returns:
        The running loop.

    Raises:
        ConfigurationError: no asyncio event loop is running in this thread.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigurationError(
            f"{what} needs a running asyncio event loop and none is running in this thread: "
            "cacheorm's async backends run on asyncio (uvloop works); under trio use anyio's "
            "asyncio backend or trio-asyncio, and from synchronous code use the sync backends "
            "or asyncio.run()"
        ) from None
