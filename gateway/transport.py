"""An HTTP/1.1 transport for httpx on asyncio protocols and httptools: the gateway's hot path.

Chosen by measurement: httpx's default transport (httpcore) cost about 5x its CPU per request,
httpx-aiohttp 1.4-1.7x (docs/architecture.md, "The upstream transport"). The gateway's needs are
narrow: one or a few upstream origins, HTTP/1.1, keep-alive, bodies streamed both ways. This
transport does exactly that, under httpx's `transport=` seam, so the client API stays httpx's and
every other module is unchanged; `tests/conformance/` holds it to httpcore's answers. Its
`exchange` method is the same exchange without httpx's request and response objects (method,
target, header list, body and bounds in; status, lower-cased header list and body out): the one
`handle_async_request` wraps, and the one the gateway's small-JSON path calls (a tenth of that
request's CPU went to httpx's objects, docs/performance.md). What it does:

- one `asyncio.Protocol` per connection, parsed by httptools (the C parser uvicorn uses);
- idle connections kept per origin, most recent first, at most `max_keepalive` of them, dropped
  when the server closes them or after `keepalive_expiry`;
- response bodies handed over chunk by chunk as they arrive, with read-side flow control, so a
  slow client slows the upstream instead of growing a buffer;
- the keep-alive race (a reused connection the server closed as the request went out) is retried
  once on a new connection when that cannot run the request twice: nothing had been written, or
  the request is replayable (an idempotent method, or marked by `exchange_extensions(replayable=True)`
  or `exchange(replayable=True)`, as the gateway does for read-only ChatKit ops) with its body in
  hand and not a byte of answer came;
- an answer that arrives while the request body is still going out (a 413 or 403 before the
  backend read an upload) stops the upload and is relayed (RFC 9112 9.5), even when the backend
  then resets the connection;
- timeouts from the request's extensions, made by `exchange_extensions` (or `exchange`'s
  arguments): httpx's `timeout` (`connect`; `read`, the longest silence allowed once the response
  has started) and this transport's own head deadline, the loop time (`loop.time()`) by which the
  response's status and headers must have arrived;
- TLS with the one `ssl.SSLContext` it is given (made at start-up, `tls.py`), and `server_name`
  for SNI and the certificate check.

Failures surface as httpx exceptions (`ConnectError` and its `TLSFailure`, `ConnectTimeout`,
`ReadTimeout`, `RemoteProtocolError` and its `InvalidResponse`, `WriteError`), which `relay.py`
maps to gateway errors. The connection itself is `connection.py`, one exchange on it `cycle.py`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import Any

import httpx

from .connection import InvalidResponse, UpstreamConnection
from .cycle import ResponseCycle

__all__ = [
    "HTTP11Transport",
    "InvalidResponse",
    "TLSFailure",
    "exchange_extensions",
    "give_back",
    "origin_of",
    "read_whole",
    "request_head",
    "response_of",
]

Origin = tuple[str, str, int]

# The transport's own request extensions; set only through `exchange_extensions`.
_HEAD_DEADLINE = "chatkit_gateway.head_deadline"
_REPLAYABLE = "chatkit_gateway.replayable"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 9.2.2


class TLSFailure(httpx.ConnectError):
    """The TLS handshake with the upstream failed; the message says why (an unknown CA, a name
    mismatch, an expired certificate, a refused client certificate)."""


def exchange_extensions(
    timeout: Mapping[str, float | None], *, head_deadline: float | None = None, replayable: bool = False
) -> dict[str, Any]:
    """A request's extensions for this transport: httpx's `timeout` (its `connect` and `read`),
    the loop time by which the response head is due, and whether sending the request twice
    changes nothing (it may then go again after the keep-alive race)."""
    extensions: dict[str, Any] = {"timeout": timeout, _HEAD_DEADLINE: head_deadline}
    if replayable:
        extensions[_REPLAYABLE] = True
    return extensions


def head_deadline_of(request: httpx.Request) -> float | None:
    deadline: float | None = request.extensions.get(_HEAD_DEADLINE)
    return deadline


class _ResponseStream(httpx.AsyncByteStream):
    __slots__ = ("_cycle", "_released")

    def __init__(self, cycle: ResponseCycle) -> None:
        self._cycle = cycle
        self._released = False

    @property
    def cycle(self) -> ResponseCycle:
        """The exchange whose body this is (the relay may take its chunks with `deliver`)."""
        return self._cycle

    # An iterator of its own rather than an async generator: the event loop registers every async
    # generator it runs (in a weak set, until the generator is collected), a cost per stream.
    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._cycle.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            give_back(self._cycle)


class StreamedResponse:
    """A streamed answer that came through this transport, with what the relay reads of an
    `httpx.Response`: the status, the (lower-cased) headers, the body's stream, and closing it,
    which gives the connection back without awaiting anything. A stream's open pays for no httpx
    request, response or headers object, and holds none while it lasts (docs/performance.md)."""

    __slots__ = ("headers", "is_closed", "status_code", "stream")

    def __init__(self, cycle: ResponseCycle) -> None:
        self.status_code = cycle.status
        self.headers = cycle.headers
        self.stream = _ResponseStream(cycle)
        self.is_closed = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            yield chunk

    def drop_headers(self) -> None:
        """The head was relayed: its headers are not held for as long as the stream lasts."""
        self.headers = []
        self.stream.cycle.drop_headers()

    def close(self) -> None:
        if not self.is_closed:
            self.is_closed = True
            self.stream.release()

    async def aclose(self) -> None:
        self.close()


def origin_of(url: httpx.URL) -> Origin:
    """(scheme, host, port) of `url`, the port its scheme's default when it names none."""
    return (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))


def give_back(cycle: ResponseCycle) -> None:
    """The exchange is over for its reader: the connection goes back to the idle pool when its
    response ended cleanly and it may carry another, else it is closed. Once per exchange."""
    connection = cycle.connection
    if cycle.reusable() and connection.cycle is cycle:
        connection.pool.release(connection)
    else:
        connection.close()


async def read_whole(cycle: ResponseCycle) -> bytes:
    """The whole body of an exchange whose head has arrived; the connection is given back in every
    case (read whole, stalled, broken, or cancelled). Raises what the body's reading raises
    (`ReadTimeout`, `RemoteProtocolError`)."""
    try:
        chunks: list[bytes] = []
        while (chunk := await cycle.next_chunk()) is not None:
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        give_back(cycle)


def response_of(cycle: ResponseCycle) -> httpx.Response:
    """An exchange whose head has arrived as an `httpx.Response` whose stream reads its body."""
    return httpx.Response(
        cycle.status,
        headers=cycle.headers,
        stream=_ResponseStream(cycle),
        # The reason phrase as sent (httpcore reports it too; without it httpx looks one up).
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": cycle.reason},
        # Not `request=`: a stream's response lives as long as the stream, and the request (its
        # body, the user's message, included) has no use once sent (docs/performance.md).
    )


def _may_retry(cycle: ResponseCycle, method: str, body_in_hand: bool, replayable: bool) -> bool:
    """Whether a request that failed on a reused connection can go again on a new one.

    A server that closes a connection with no answer may have closed it while idle (it never saw
    the request) or read the request and died on it: only the first is safe to repeat for a
    request that changes something (a user's message must not be sent twice)."""
    if not cycle.wrote:
        return True  # nothing left the gateway
    if cycle.received_any or not body_in_hand:
        return False  # an answer had started, or the body was streamed and is gone
    return method in IDEMPOTENT_METHODS or replayable


def request_head(method: str, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The request line and header block, as they go on the wire (RFC 9112 3, 5)."""
    head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        head += (name, b": ", value, b"\r\n")
    head.append(b"\r\n")
    return b"".join(head)


def _connect_timeout(timeout: float | None, deadline: float | None) -> float | None:
    """The connect timeout, shortened to what is left before the head deadline."""
    if deadline is None:
        return timeout
    left = max(0.0, deadline - asyncio.get_running_loop().time())
    return left if timeout is None else min(timeout, left)


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    return str(exc.reason or exc.strerror or exc)


class HTTP11Transport(httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=HTTP11Transport(...))`: HTTP/1.1 to a few upstream origins."""

    def __init__(
        self,
        *,
        max_keepalive: int = 16,
        keepalive_expiry: float = 1.5,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        max_header_bytes: int = 65536,
    ) -> None:
        self.max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry
        self.max_header_bytes = max_header_bytes
        self._ssl_context = ssl_context
        self._server_name = server_name
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = origin_of(url)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        stream = request.stream
        body: bytes | AsyncIterable[bytes]
        if isinstance(stream, httpx.ByteStream):
            body, chunked = b"".join(stream), False
        else:
            assert isinstance(stream, httpx.AsyncByteStream)
            body, chunked = stream, request.headers.get("transfer-encoding", "").lower() == "chunked"
        cycle = await self.exchange(
            origin,
            request.method,
            url.raw_path,
            request.headers.raw,
            body,
            chunked=chunked,
            connect_timeout=timeouts.get("connect"),
            read_timeout=timeouts.get("read"),
            deadline=head_deadline_of(request),
            replayable=request.extensions.get(_REPLAYABLE) is True,
        )
        return response_of(cycle)

    async def exchange(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | AsyncIterable[bytes],
        *,
        chunked: bool = False,
        connect_timeout: float | None,
        read_timeout: float | None,
        deadline: float | None,
        replayable: bool = False,
    ) -> ResponseCycle:
        """Send one request and wait for its response head: the transport's own entry point, which
        `handle_async_request` wraps in httpx's objects and the gateway's small-JSON path uses
        as is (docs/performance.md, "Third round").

        `headers` go out as given, in order (the caller frames the request: `Host`, and the
        `Content-Length` of a body in hand or the `Transfer-Encoding` of a streamed one, which
        `chunked` says to apply). `connect_timeout` bounds the connection's opening, `deadline`
        (loop time) the arrival of the head, `read_timeout` any silence after it. `replayable`:
        sending the request twice changes nothing (idempotent methods are so anyway).

        The returned exchange has its status, reason and (lower-cased) headers; its body is read
        with `read_whole`, or through `response_of`'s stream, either of which gives the connection
        back. Failures are httpx's exceptions, as the module's docstring lists them."""
        head = request_head(method, target, headers)
        connection, reused = await self._acquire(origin, _connect_timeout(connect_timeout, deadline))
        cycle = connection.start_cycle()
        try:
            await self._exchange(cycle, head, body, chunked, read_timeout, deadline)
            return cycle
        except (httpx.RemoteProtocolError, httpx.WriteError):
            body_in_hand = isinstance(body, bytes)
            if not (reused and _may_retry(cycle, method, body_in_hand, replayable)) or isinstance(
                cycle.error, InvalidResponse
            ):
                raise
        # The keep-alive race: the server closed this idle connection as the request went out.
        connection, _ = await self._acquire(origin, _connect_timeout(connect_timeout, deadline), fresh=True)
        cycle = connection.start_cycle()
        await self._exchange(cycle, head, body, chunked, read_timeout, deadline)
        return cycle

    async def _exchange(
        self,
        cycle: ResponseCycle,
        head: bytes,
        body: bytes | AsyncIterable[bytes],
        chunked: bool,
        read_timeout: float | None,
        deadline: float | None,
    ) -> None:
        connection = cycle.connection
        cycle.watch(deadline, read_timeout)
        try:
            try:
                if isinstance(body, bytes):
                    await connection.write(head + body)
                else:
                    await self._send_streamed(cycle, head, body, chunked)
            except httpx.WriteError:
                # The connection is going down. An answer that came before it still counts (a 413
                # sent before a reset); without one, the head fails as the connection is lost.
                pass
            await cycle.head
        except BaseException:
            connection.close()
            raise

    async def _send_streamed(
        self, cycle: ResponseCycle, head: bytes, body: AsyncIterable[bytes], chunked: bool
    ) -> None:
        """Send a streamed body (an upload) while watching for the answer: one that refuses the
        body, or closes the connection, before the body is all out stops the upload (RFC 9112
        9.5), even while the client is slow to send the next piece; so does a failure (the head
        deadline). The connection cannot carry another request then."""
        sending = asyncio.ensure_future(self._write_streamed(cycle.connection, head, body, chunked))
        try:
            await asyncio.wait((sending, cycle.head), return_when=asyncio.FIRST_COMPLETED)
            answered_no = cycle.answered and (cycle.status >= 400 or not cycle.keep_alive)
            if not sending.done() and (answered_no or cycle.error is not None):
                cycle.keep_alive = False
                sending.cancel()
                return  # the head is read (or its error raised) by the caller
            await sending  # not answered yet, or a backend that answered early and reads on
        finally:
            if not sending.done():
                sending.cancel()

    async def _write_streamed(
        self, connection: UpstreamConnection, head: bytes, body: AsyncIterable[bytes], chunked: bool
    ) -> None:
        await connection.write(head)
        async for chunk in body:
            if chunk:
                await connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            await connection.write(b"0\r\n\r\n")

    async def _acquire(
        self, origin: Origin, connect_timeout: float | None, *, fresh: bool = False
    ) -> tuple[UpstreamConnection, bool]:
        idle = self._idle.get(origin)
        if idle and not fresh:
            now = asyncio.get_running_loop().time()
            while idle:
                connection = idle.pop()
                if not connection.closed and now - connection.idle_since < self.keepalive_expiry:
                    return connection, True
                connection.close()
        return await self._connect(origin, connect_timeout), False

    async def _connect(self, origin: Origin, timeout: float | None) -> UpstreamConnection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()  # once, not per connection
            context = self._ssl_context
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    lambda: UpstreamConnection(self, origin),
                    host,
                    port,
                    ssl=context,
                    server_hostname=(self._server_name or host) if context else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except ssl.SSLError as exc:
            raise TLSFailure(f"{host}:{port}: {_tls_reason(exc)}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self._all.add(protocol)
        return protocol

    def release(self, connection: UpstreamConnection) -> None:
        """Back to the idle pool after a complete response (or closed, when the pool is full)."""
        connection.cycle = None
        connection.flow.resume_reading()  # paused if its reader stopped before the buffered end
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) >= self.max_keepalive:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        idle.append(connection)

    def forget(self, connection: UpstreamConnection) -> None:
        self._all.discard(connection)
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)

    async def aclose(self) -> None:
        for connection in list(self._all):
            connection.close()
        self._idle.clear()
