"""The upstream transport's own promises, against real loopback servers written for each case:
the reason phrase as sent, and the response-head deadline that covers the wait for a place in
the JSON gate and a backend that stops reading the request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvloop

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamTimeout
from gateway.transport import HTTP11Transport
from gateway.upstream import Upstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# The gateway serves on uvloop; the transport is plain asyncio code, so both loops are tested.
LOOPS = {"uvloop": uvloop.run, "asyncio": asyncio.run}
loops = pytest.mark.parametrize("run", list(LOOPS.values()), ids=list(LOOPS))


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """A loopback server running `handler` per connection; its URL. Closed (and its connections
    cancelled) on exit."""
    tasks: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
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


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def upstream(url: str, **overrides: object) -> Upstream:
    return Upstream(UpstreamConfig.model_validate({"url": url, **overrides}))


@loops
def test_the_reason_phrase_is_the_one_the_upstream_sent_even_in_pieces(run: Callable[..., Any]) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 Fi")
            await writer.drain()
            await asyncio.sleep(0.05)  # the parser sees the status line in two reads
            writer.write(b"ne Thanks\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    async def scenario() -> tuple[str, int, bytes | None]:
        async with serving(answer) as url:
            client = upstream(url)
            try:
                reply = await client.send_json(url, [], b'{"type":"threads.list","params":{}}')
                async with httpx.AsyncClient(transport=HTTP11Transport()) as direct:
                    response = await direct.post(url, content=b"{}")
                assert (response.status_code, response.content) == (reply.status, reply.body)
                return response.reason_phrase, reply.status, reply.body
            finally:
                await client.aclose()

    assert run(scenario()) == ("Fine Thanks", 200, b"{}")


@loops
def test_waiting_for_the_json_gate_counts_against_the_head_deadline(run: Callable[..., Any]) -> None:
    """Two requests, one place (`max_connections = 1`), a backend that never answers: both get
    their 504 at the deadline, the second one not a whole deadline later."""

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(60)

    async def scenario() -> list[float]:
        async with serving(never_answer) as url:
            client = upstream(url, max_connections=1, connect_timeout=0.5, response_timeout=1.0)
            started = time.monotonic()

            async def one() -> float:
                with pytest.raises(UpstreamTimeout):
                    await client.send_json(url, [], b"{}")
                return time.monotonic() - started

            try:
                return list(await asyncio.gather(one(), one()))
            finally:
                await client.aclose()

    first, second = sorted(run(scenario()))
    deadline = 0.5 + 1.0
    assert first >= deadline - 0.05, first
    # Without the shared deadline the second would wait 1.5 s for the gate, then 1.5 s more.
    assert second < 2 * deadline - 0.5, second


@loops
def test_a_backend_that_stops_reading_the_request_gets_a_timeout_at_the_deadline(run: Callable[..., Any]) -> None:
    """The body cannot all go out (the backend reads nothing, the socket buffers fill): that is a
    504 at the head deadline, not a hang and not a 502."""
    held: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await asyncio.sleep(60)

    async def scenario() -> float:
        async with serving(never_read) as url:
            client = upstream(url, connect_timeout=0.5, response_timeout=0.5)
            started = time.monotonic()
            try:
                with pytest.raises(UpstreamTimeout):
                    await client.send_json(url, [], b"x" * (64 * 1024 * 1024))
                return time.monotonic() - started
            finally:
                await client.aclose()

    elapsed = run(scenario())
    assert held, "the backend saw no connection"
    assert 1.0 - 0.05 <= elapsed < 5.0, elapsed


@loops
def test_a_finished_response_never_reads_the_next_response_on_its_connection(run: Callable[..., Any]) -> None:
    """Per-response state lives with the response: once the connection is reused, the first
    response's stream has nothing more to give, and the second's body is the second's alone."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for body in (b"first", b"second"):
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
            await writer.drain()
        await asyncio.sleep(60)

    async def scenario() -> tuple[bytes, bytes, list[bytes], int]:
        async with serving(answer) as url:
            transport = HTTP11Transport()
            async with httpx.AsyncClient(transport=transport) as client:
                first = await client.send(client.build_request("GET", url), stream=True)
                first_body = await first.aread()
                await first.aclose()  # the connection goes back to the pool
                second = await client.send(client.build_request("GET", url), stream=True)
                stale = [chunk async for chunk in first.stream]  # type: ignore[union-attr]
                second_body = await second.aread()
                return first_body, second_body, stale, len(transport._all)

    first, second, stale, connections = run(scenario())
    assert (first, second, stale) == (b"first", b"second", [])
    assert connections == 1  # the second request did reuse the connection
