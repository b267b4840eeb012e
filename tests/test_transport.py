"""The upstream transport's own promises, against real loopback servers written for each case:
the reason phrase as sent, the response-head deadline that covers the wait for a place in the
JSON gate and a backend that stops reading the request, the exchange entry point the small-JSON
path uses (the same bytes as through httpx, the keep-alive race rules), and the JSON gate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamTimeout
from gateway.transport import HTTP11Transport, read_whole
from gateway.upstream import Gate, Upstream
from tests.support.loopback import loops, serving


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


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request with a `content-length` body (or none), as it came on the wire."""
    head = await read_head(reader)
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


@loops
def test_the_exchange_entry_point_sends_what_httpx_sends_and_answers_the_raw_head(run: Callable[..., Any]) -> None:
    """`HTTP11Transport.exchange` (the small-JSON path's entry point) puts the same bytes on the
    wire as `handle_async_request` for the same request, answers status, lower-cased header names
    with values as sent, in order, and a body `read_whole` reads; the connection is then reused."""
    seen: list[bytes] = []
    connections: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 201 Made\r\nContent-Type: application/json\r\nX-Two: a\r\nx-two: B\r\n")
            writer.write(b'Content-Length: 7\r\n\r\n{"a":1}')
            await writer.drain()

    headers = [(b"host", b"backend"), (b"x-request-id", b"r1"), (b"content-length", b"2")]

    async def scenario() -> tuple[int, list[tuple[bytes, bytes]], bytes, int]:
        async with serving(answer) as url:
            parsed = httpx.URL(url)
            origin = ("http", parsed.host, parsed.port or 80)
            transport = HTTP11Transport()
            try:
                timeouts = {"connect": 1.0, "read": 1.0}
                cycle = await transport.exchange(
                    origin,
                    "POST",
                    parsed.raw_path,
                    headers,
                    b"{}",
                    connect_timeout=1.0,
                    read_timeout=1.0,
                    deadline=None,
                )
                body = await read_whole(cycle)
                request = httpx.Request(
                    "POST", url, headers=headers, stream=httpx.ByteStream(b"{}"), extensions={"timeout": timeouts}
                )
                response = await transport.handle_async_request(request)
                assert await response.aread() == body
                await response.aclose()
                return cycle.status, cycle.headers, body, len(transport._all)
            finally:
                await transport.aclose()

    status, answer_headers, body, open_connections = run(scenario())
    assert (status, body) == (201, b'{"a":1}')
    assert answer_headers == [
        (b"content-type", b"application/json"),
        (b"x-two", b"a"),
        (b"x-two", b"B"),
        (b"content-length", b"7"),
    ]
    assert (
        seen[0]
        == seen[1]
        == b"POST /chatkit HTTP/1.1\r\nhost: backend\r\nx-request-id: r1\r\ncontent-length: 2\r\n\r\n{}"
    )
    assert (len(connections), open_connections) == (1, 1)  # the second exchange reused the connection


@loops
@pytest.mark.parametrize("replayable", [True, False], ids=["replayable", "not-replayable"])
def test_the_exchange_entry_point_retries_the_keepalive_race_only_when_replayable(
    run: Callable[..., Any], replayable: bool
) -> None:
    """A reused connection that the server closes after reading a POST, unanswered: sent again on a
    new connection when marked replayable, else the failure (the server may have acted on it)."""
    served: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(0)
        first_connection = len(served) == 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        if first_connection:
            await read_request(reader)  # read, never answered: the connection closes
            return
        await asyncio.sleep(60)

    async def scenario() -> list[bytes | str]:
        async with serving(answer) as url:
            parsed = httpx.URL(url)
            origin = ("http", parsed.host, parsed.port or 80)
            transport = HTTP11Transport()
            results: list[bytes | str] = []
            try:
                for _ in range(2):
                    try:
                        cycle = await transport.exchange(
                            origin,
                            "POST",
                            parsed.raw_path,
                            [(b"host", b"backend"), (b"content-length", b"2")],
                            b"{}",
                            connect_timeout=1.0,
                            read_timeout=1.0,
                            deadline=asyncio.get_running_loop().time() + 2.0,
                            replayable=replayable,
                        )
                        results.append(await read_whole(cycle))
                    except httpx.RemoteProtocolError:
                        results.append("failed")
                return results
            finally:
                await transport.aclose()

    results = run(scenario())
    assert results == ([b"{}", b"{}"] if replayable else [b"{}", "failed"])
    assert len(served) == (2 if replayable else 1)


@loops
def test_a_json_answer_that_is_not_small_comes_back_as_a_stream(run: Callable[..., Any]) -> None:
    """`send_json` reads whole only an answer with a length within `SMALL_BODY_BYTES` that is not
    SSE; a chunked one comes back as a response to stream, its connection given back at its close."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"2\r\n{}\r\n0\r\n\r\n")
            await writer.drain()

    async def scenario() -> tuple[int, bytes | None, bytes, int]:
        async with serving(answer) as url:
            client = upstream(url)
            try:
                reply = await client.send_json(url, [], b"{}")
                assert reply.response is not None
                streamed = b"".join([chunk async for chunk in reply.response.stream])  # type: ignore[union-attr]
                await reply.response.aclose()
                again = await client.send_json(url, [], b"{}")
                assert again.response is not None
                await again.response.aclose()
                return reply.status, reply.body, streamed, len(client.json_transport._all)  # type: ignore[attr-defined]
            finally:
                await client.aclose()

    assert run(scenario()) == (200, None, b"{}", 1)


def test_the_gate_takes_a_free_place_at_once_and_hands_places_on_in_order() -> None:
    async def scenario() -> list[object]:
        gate = Gate(1)
        assert gate.try_take() and not gate.try_take()
        loop = asyncio.get_running_loop()
        order: list[object] = []

        async def wait(name: str, deadline: float) -> None:
            try:
                await gate.take(deadline)
            except TimeoutError:
                order.append(f"{name} timed out")
                return
            order.append(name)
            await asyncio.sleep(0.01)
            gate.release()

        far = loop.time() + 5
        first = asyncio.ensure_future(wait("first", far))
        cancelled = asyncio.ensure_future(wait("cancelled", far))
        late = asyncio.ensure_future(wait("late", loop.time() + 0.05))
        second = asyncio.ensure_future(wait("second", far))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0.1)  # `late` times out while the place is still held
        gate.release()
        await asyncio.gather(first, second, late, return_exceptions=True)
        order.append(cancelled.cancelled())
        order.append(gate.try_take() and not gate.try_take())  # one place, free again
        return order

    assert asyncio.run(scenario()) == ["late timed out", "first", "second", True, True]


def test_a_place_handed_to_a_waiter_cancelled_at_that_moment_goes_to_the_next() -> None:
    async def scenario() -> tuple[bool, bool]:
        gate = Gate(1)
        gate.try_take()
        far = asyncio.get_running_loop().time() + 5
        granted = asyncio.ensure_future(gate.take(far))
        after = asyncio.ensure_future(gate.take(far))
        await asyncio.sleep(0)
        gate.release()  # to `granted`, which is cancelled before it runs again
        granted.cancel()
        await asyncio.sleep(0)
        await asyncio.wait_for(after, 1.0)  # the place passed on
        return granted.cancelled(), gate.try_take()

    assert asyncio.run(scenario()) == (True, False)


@loops
def test_a_chatkit_stream_opened_without_httpx_sends_and_answers_as_through_httpx(run: Callable[..., Any]) -> None:
    """`Upstream.open_stream` (the ChatKit stream's path on the gateway's own transport, without
    httpx's objects) puts the same bytes on the wire as `send_stream` for the same request, answers
    the same status, headers and body, and gives its connection back for the next stream when
    closed at the end of the body."""
    requests: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            requests.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 Fine\r\nContent-Type: text/event-stream\r\nX-Extra: 1\r\n")
            writer.write(b"transfer-encoding: chunked\r\n\r\n")
            writer.write(b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n")
            await writer.drain()

    headers = [(b"content-type", b"application/json"), (b"x-chatkit-user", b"alice")]

    async def scenario() -> list[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        async with serving(answer) as url:
            client = upstream(url)
            seen = []
            try:
                for _ in range(2):
                    direct = await client.open_stream(headers, b'{"type":"threads.create"}')
                    assert not isinstance(direct, httpx.Response)
                    body = b"".join([chunk async for chunk in direct.aiter_raw()])
                    direct.close()
                    seen.append((direct.status_code, list(direct.headers), body))
                through_httpx = await client.send_stream(client.url, headers, b'{"type":"threads.create"}')
                body = b"".join([chunk async for chunk in through_httpx.aiter_raw()])
                await through_httpx.aclose()
                lowered = [(name.lower(), value) for name, value in through_httpx.headers.raw]
                seen.append((through_httpx.status_code, lowered, body))
                assert len(client.stream_transport._all) == 1  # type: ignore[attr-defined]  # one connection, reused
            finally:
                await client.aclose()
            return seen

    seen = run(scenario())
    assert len(requests) == 3 and requests[0] == requests[1] == requests[2]
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][0] == 200 and seen[0][2] == b"data: 1\n\ndata: 2\n\n"
    assert (b"x-extra", b"1") in seen[0][1]


def test_event_loops_on_two_threads_each_parse_their_own_connections_answers() -> None:
    """The upstream parser's callbacks are shared functions acting for the connection being
    parsed (`gateway/connection.py`): two loops on two threads, parsing at once with the
    interpreter switching threads as often as it can, each see only their own answers."""
    import socket
    import sys
    import threading

    import uvloop

    from gateway.connection import UpstreamConnection

    def answer(tag: bytes) -> bytes:
        body = b'{"tag": "%s"}' % tag
        return b"HTTP/1.1 200 OK\r\nx-tag: %s\r\ncontent-length: %d\r\n\r\n%s" % (tag, len(body), body)

    mixed: list[str] = []

    async def parse(name: str) -> None:
        near, far = socket.socketpair()
        with near, far:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(
                lambda: UpstreamConnection(HTTP11Transport(), ("http", "127.0.0.1", 1)), sock=near
            )
            for n in range(3000):
                tag = b"%s-%d" % (name.encode(), n)
                cycle = connection.start_cycle()
                cycle.wrote = True
                connection.data_received(answer(tag))
                got = (cycle.status, dict(cycle.headers).get(b"x-tag"), b"".join(cycle.chunks))
                if got != (200, tag, b'{"tag": "%s"}' % tag):
                    mixed.append(f"{name} {n}: {got!r}")
                    return
                connection.cycle = None
            connection.abort()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=uvloop.run, args=(parse(name),)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads)
    assert mixed == []
