"""An asyncio loopback server running a handler per connection, for tests that write the other
side of a connection by hand; and the two event loops such tests run on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import uvloop

__all__ = ["Handler", "loops", "serving"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# The gateway serves on uvloop; its transport and relay are plain asyncio code, so both loops are tested.
LOOPS = {"uvloop": uvloop.run, "asyncio": asyncio.run}
loops = pytest.mark.parametrize("run", list(LOOPS.values()), ids=list(LOOPS))


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """A loopback server running `handler` per connection; its URL (`/chatkit`). Closed (and its
    connections cancelled) on exit; a connection the client drops is not an error."""
    tasks: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/chatkit"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
