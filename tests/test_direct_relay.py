"""A stream's chunks written to the client from the upstream connection's read callback
(`ResponseCycle.deliver` into the protocol's `DirectBody`, docs/performance.md): the same bytes, in
the same order, as they arrive, with back-pressure both ways, and the same endings.

The relay runs here as the gateway runs it: `relay_response` in an ASGI app served by uvicorn
with the gateway's protocol, its upstream reached through the gateway's transport, against a
loopback server written for each case, on uvloop and on plain asyncio.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from gateway.config import UpstreamConfig
from gateway.protocol import GatewayHttpProtocol
from gateway.relay import HEARTBEAT, UPSTREAM_BROKE_EVENT, RelayOutcome, direct_body_of, relay_response
from gateway.upstream import Upstream
from tests.support.loopback import Handler, loops, serving
from tests.test_response_writes import data_segments_in

SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Relayed:
    """What the gateway-side app saw of each relayed answer."""

    def __init__(self) -> None:
        self.outcomes: list[RelayOutcome] = []
        self.body_messages: list[int] = []  # per answer: `http.response.body` messages through `send`
        self.done = asyncio.Event()


@asynccontextmanager
async def upstream_server(handler: Handler) -> AsyncIterator[str]:
    """A loopback upstream that reads the request's head, then runs `handler`."""

    async def after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await handler(reader, writer)

    async with serving(after_head) as url:
        yield url


@asynccontextmanager
async def relaying_gateway(upstream_url: str, heartbeat_seconds: float = 0.0) -> AsyncIterator[tuple[str, Relayed]]:
    """uvicorn with the gateway's protocol, serving an app that relays the upstream's stream."""
    upstream = Upstream(UpstreamConfig.model_validate({"url": upstream_url}))
    relayed = Relayed()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        counted = 0

        async def counting_send(message: Message) -> None:
            nonlocal counted
            counted += message["type"] == "http.response.body"
            await send(message)

        outcome = RelayOutcome()
        try:
            response = await upstream.send_stream(upstream.url, [], b"{}")
            await relay_response(
                response,
                counting_send,
                receive,
                outcome=outcome,
                direct=direct_body_of(scope),
                heartbeat_seconds=heartbeat_seconds,
            )
        finally:
            relayed.outcomes.append(outcome)
            relayed.body_messages.append(counted)
            relayed.done.set()

    config = uvicorn.Config(app, http=GatewayHttpProtocol, ws="none", lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/chatkit", relayed
    finally:
        server.should_exit = True
        await serving
        await upstream.aclose()


@loops
def test_chunks_after_the_first_bypass_send_and_arrive_in_order_as_they_come(run: Callable[..., Any]) -> None:
    events = 20
    log: list[tuple[str, int]] = []

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        for n in range(events):
            log.append(("upstream", n))
            writer.write(chunk(b'data: {"n": %d}\n\n' % n))
            await writer.drain()
            await asyncio.sleep(0.03)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def scenario() -> tuple[bytes, Relayed]:
        async with upstream_server(stream) as url, relaying_gateway(url) as (gateway, relayed):
            received = b""
            async with httpx.AsyncClient() as client, client.stream("POST", gateway, content=b"{}") as response:
                assert response.status_code == 200
                async for data in response.aiter_raw():
                    received += data
                    log.append(("client", received.count(b"\n\n") - 1))
            await relayed.done.wait()
            return received, relayed

    received, relayed = run(scenario())
    assert received == b"".join(b'data: {"n": %d}\n\n' % n for n in range(events))
    # The first chunk goes through `send` (with the held head): the 19 others, and the body's end,
    # went straight from the upstream's read callback to the socket.
    assert relayed.body_messages == [1]
    outcome = relayed.outcomes[0]
    assert (outcome.events, outcome.bytes_out, outcome.upstream_broke) == (events, len(received), False)
    # Incremental: the client had event n before the upstream wrote event n + 2 (30 ms later).
    for n in range(events - 2):
        assert log.index(("client", n)) < log.index(("upstream", n + 2)), log


@loops
def test_a_client_that_stops_reading_stops_the_upstream_instead_of_growing_a_buffer(run: Callable[..., Any]) -> None:
    event = b"data: " + b"x" * 16_000 + b"\n\n"
    total_events = 4_000  # 64 MB: far more than the sockets on the way can hold
    written = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        writer.write(SSE_HEAD)
        for _ in range(total_events):
            writer.write(chunk(event))
            await writer.drain()
            written += len(event)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def scenario() -> tuple[int, str, int, Relayed]:
        async with upstream_server(flood) as url, relaying_gateway(url) as (gateway, relayed):
            port = int(gateway.rsplit(":", 1)[1].split("/")[0])
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            writer.write(b"POST /chatkit HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(1.0)  # not reading: every buffer on the way fills up
            while_paused = written
            digest, size = hashlib.sha256(), 0
            while True:  # the chunked body, read as it comes
                line = await reader.readuntil(b"\r\n")
                length = int(line.strip(), 16)
                data = await reader.readexactly(length + 2)
                if length == 0:
                    break
                digest.update(data[:-2])
                size += length
            writer.close()
            await relayed.done.wait()
            return while_paused, digest.hexdigest(), size, relayed

    while_paused, digest, size, relayed = run(scenario())
    expected = event * total_events
    assert size == len(expected) and digest == hashlib.sha256(expected).hexdigest()
    # Bounded by the kernel's socket buffers (a few MB each way), not by the 64 MB on offer.
    assert while_paused < 24 * 1024 * 1024, while_paused
    assert relayed.body_messages == [1] and relayed.outcomes[0].events == total_events


@loops
def test_a_client_leaving_mid_stream_closes_the_upstream_connection(run: Callable[..., Any]) -> None:
    state: dict[str, asyncio.Event] = {}  # made in the scenario's own loop

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        try:
            for n in range(2_000):
                writer.write(chunk(b"data: %d\n\n" % n))
                await writer.drain()
                await asyncio.sleep(0.01)
            await reader.read()  # pragma: no cover - the test fails before this
        finally:
            state["closed"].set()

    async def scenario() -> tuple[bool, Relayed]:
        state["closed"] = asyncio.Event()
        async with upstream_server(endless) as url, relaying_gateway(url) as (gateway, relayed):
            async with httpx.AsyncClient() as client, client.stream("POST", gateway, content=b"{}") as response:
                received = b""
                async for data in response.aiter_raw():
                    received += data
                    if received.count(b"\n\n") >= 10:
                        break  # leaves: the connection is closed with the stream
            await asyncio.wait_for(relayed.done.wait(), 5)
            await asyncio.wait_for(state["closed"].wait(), 5)
            return state["closed"].is_set(), relayed

    upstream_closed, relayed = run(scenario())
    assert upstream_closed
    outcome = relayed.outcomes[0]
    assert outcome.client_disconnected and outcome.events >= 10
    assert relayed.body_messages == [1]  # only the first chunk went through `send`


@loops
def test_an_upstream_breaking_mid_stream_ends_with_the_chatkit_error_event(run: Callable[..., Any]) -> None:
    async def breaks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        for n in range(5):
            writer.write(chunk(b"data: %d\n\n" % n))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(chunk(b"data: half an ev"))  # then the connection drops mid-frame
        await writer.drain()
        writer.transport.abort()

    async def scenario() -> tuple[bytes, Relayed]:
        async with upstream_server(breaks) as url, relaying_gateway(url) as (gateway, relayed):
            async with httpx.AsyncClient() as client:
                response = await client.post(gateway, content=b"{}")
            await relayed.done.wait()
            return response.content, relayed

    body, relayed = run(scenario())
    assert body.startswith(b"data: 0\n\n") and body.endswith(UPSTREAM_BROKE_EVENT)
    assert b"data: half an ev" + UPSTREAM_BROKE_EVENT in body
    outcome = relayed.outcomes[0]
    assert outcome.upstream_broke and not outcome.client_disconnected
    assert relayed.body_messages == [3]  # the first chunk, the error event, the end


@loops
def test_heartbeats_fill_silences_before_the_first_event_and_between_direct_chunks(run: Callable[..., Any]) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        await writer.drain()
        await asyncio.sleep(0.5)  # before the first event: heartbeats go through `send`
        for n in range(3):
            writer.write(chunk(b"data: %d\n\n" % n))
            await writer.drain()
            await asyncio.sleep(0.5)  # after it: from the heartbeat's timer, written directly
        writer.write(chunk(b"data: half"))  # mid-frame: no heartbeat may split it
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.write(chunk(b" an event\n\n") + b"0\r\n\r\n")
        await writer.drain()

    async def scenario() -> tuple[bytes, Relayed]:
        async with upstream_server(slow) as url, relaying_gateway(url, heartbeat_seconds=0.1) as (gateway, relayed):
            async with httpx.AsyncClient() as client:
                response = await client.post(gateway, content=b"{}")
            await relayed.done.wait()
            return response.content, relayed

    body, relayed = run(scenario())
    frames = body.split(b"\n\n")[:-1]
    events = [frame for frame in frames if frame != HEARTBEAT.rstrip(b"\n")]
    # In order, whole: a heartbeat inside the last event's silence would have split its frame.
    assert events == [b"data: 0", b"data: 1", b"data: 2", b"data: half an event"]
    beats = [frames.index(event) for event in events]
    # Heartbeats before the first event, and in each silence between events; none inside the last.
    assert beats[0] >= 2 and all(b - a >= 3 for a, b in zip(beats, beats[1:-1], strict=False)), frames
    assert body.endswith(b"data: half an event\n\n")
    outcome = relayed.outcomes[0]
    assert outcome.events == 4 and not outcome.upstream_broke


@loops
def test_an_open_stream_keeps_no_task_but_its_request(run: Callable[..., Any]) -> None:
    """The client's leaving is told by the protocol's callback and the heartbeat is a timer: an
    open stream holds its request's task only, not a watcher or a heartbeat task besides."""
    opened: dict[str, asyncio.Event] = {}

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD)
        for n in range(2_000):
            writer.write(chunk(b"data: %d\n\n" % n))
            await writer.drain()
            if n == 3:
                opened["event"].set()
            await asyncio.sleep(0.01)

    async def scenario() -> tuple[list[str], Relayed]:
        opened["event"] = asyncio.Event()
        async with upstream_server(endless) as url, relaying_gateway(url, heartbeat_seconds=0.05) as (gateway, relayed):
            async with httpx.AsyncClient() as client, client.stream("POST", gateway, content=b"{}") as response:
                received = b""
                async for data in response.aiter_raw():
                    received += data
                    if received.count(b"\n\n") >= 5:
                        break
                await opened["event"].wait()
                names = [task.get_coro().__qualname__ for task in asyncio.all_tasks()]  # type: ignore[union-attr]
            await asyncio.wait_for(relayed.done.wait(), 5)
            return names, relayed

    names, relayed = run(scenario())
    assert names.count("RequestResponseCycle.run_asgi") == 1, names
    assert not [name for name in names if "disconnect" in name or "keep_alive" in name or "heartbeat" in name], names
    assert relayed.outcomes[0].client_disconnected


@loops
def test_the_last_events_and_the_end_of_the_body_leave_in_one_segment_when_they_arrive_together(
    run: Callable[..., Any],
) -> None:
    """What one read of the upstream brings goes out in one write: here the last two events and
    the end of the body, which then also completes the response without a message through `send`.
    Segments are counted by the kernel on the client's socket (`TCP_INFO`)."""

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(b"data: 0\n\n"))
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(chunk(b"data: 1\n\n") + chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await writer.drain()

    async def scenario() -> tuple[bytes, int, Relayed]:
        async with upstream_server(stream) as url, relaying_gateway(url) as (gateway, relayed):
            port = int(gateway.split(":")[2].split("/")[0])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /chatkit HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
            received = b""
            while not received.endswith(b"\r\n0\r\n\r\n"):
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, received
                received += data
            segments = data_segments_in(writer.get_extra_info("socket"))
            writer.close()
            await relayed.done.wait()
            return received, segments, relayed

    received, segments, relayed = run(scenario())
    head, body = received.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == chunk(b"data: 0\n\n") + chunk(b"data: 1\n\ndata: 2\n\n") + b"0\r\n\r\n"
    assert segments == 2  # the head with the first event; the last two events with the end
    assert relayed.body_messages == [1]
    assert relayed.outcomes[0].events == 3 and relayed.outcomes[0].end_reason == "complete"


@loops
def test_a_connection_carries_the_next_requests_after_a_stream_even_sent_in_pieces_during_it(
    run: Callable[..., Any],
) -> None:
    """While a stream is open its connection's request parser is let go (it waits for nothing);
    a request the client sends meanwhile, in pieces, and one after the stream, are read and
    answered in order on the same connection, as before."""

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(SSE_HEAD + chunk(b"data: 0\n\n"))
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.write(chunk(b"data: 1\n\n") + b"0\r\n\r\n")
            await writer.drain()

    request = b"POST /chatkit HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"

    async def read_stream(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        return await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 5)

    async def scenario() -> list[bytes]:
        async with serving(stream) as url, relaying_gateway(url) as (gateway, relayed):
            port = int(gateway.split(":")[2].split("/")[0])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            bodies = [await asyncio.wait_for(reader.readuntil(b"data: 0\n\n\r\n"), 5)]
            writer.write(request[:20])  # the next request, in pieces, while the stream is open
            await asyncio.sleep(0.05)
            writer.write(request[20:])
            bodies[0] += await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 5)
            bodies.append(await read_stream(reader))  # the pipelined one
            writer.write(request)  # and one after
            bodies.append(await read_stream(reader))
            writer.close()
            while len(relayed.outcomes) < 3:
                await asyncio.wait_for(relayed.done.wait(), 5)
                relayed.done.clear()
            return bodies

    bodies = run(scenario())
    expected = chunk(b"data: 0\n\n") + chunk(b"data: 1\n\n") + b"0\r\n\r\n"
    assert bodies[0].endswith(expected) and bodies[0].count(b"data: 1") == 1
    assert bodies[1] == expected and bodies[2] == expected
