"""An HTTP/1.1 transport for httpx on asyncio protocols and httptools: the gateway's hot path.

Chosen by measurement: httpx's default transport (httpcore) cost about 5x its CPU per request,
httpx-aiohttp 1.4-1.7x (docs/architecture.md, "The upstream transport"). The gateway's needs are
narrow: one or a few upstream origins, HTTP/1.1, keep-alive, bodies streamed both ways. This
transport does exactly that, under httpx's `transport=` seam, so the client API stays httpx's and
every other module is unchanged; `tests/conformance/` holds it to httpcore's answers:

- one `asyncio.Protocol` per connection, parsed by httptools (the C parser uvicorn uses);
- idle connections kept per origin, most recent first, at most `max_keepalive` of them, dropped
  when the server closes them or after `keepalive_expiry`;
- response bodies handed over chunk by chunk as they arrive, with read-side flow control, so a
  slow client slows the upstream instead of growing a buffer;
- the keep-alive race (a reused connection the server closed as the request went out) is retried
  once on a new connection when that cannot run the request twice: nothing had been written, or
  the request is replayable (an idempotent method, or marked by `exchange_extensions(replayable=True)`,
  which the gateway does for read-only ChatKit ops) with its body in hand and not a byte of answer came;
- an answer that arrives while the request body is still going out (a 413 or 403 before the
  backend read an upload) stops the upload and is relayed (RFC 9112 9.5), even when the backend
  then resets the connection;
- timeouts from the request's extensions, made by `exchange_extensions`: httpx's `timeout`
  (`connect`; `read`, the longest silence allowed once the response has started) and this
  transport's own head deadline, the loop time (`loop.time()`) by which the response's status and
  headers must have arrived;
- TLS with the one `ssl.SSLContext` it is given (made at start-up, `tls.py`), and `server_name`
  for SNI and the certificate check.

Failures surface as httpx exceptions (`ConnectError` and its `TLSFailure`, `ConnectTimeout`,
`ReadTimeout`, `RemoteProtocolError` and its `InvalidResponse`, `WriteError`), which `relay.py`
maps to gateway errors. The connection itself is `connection.py`, one exchange on it `cycle.py`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from .connection import InvalidResponse, UpstreamConnection
from .cycle import ResponseCycle

__all__ = ["HTTP11Transport", "InvalidResponse", "TLSFailure", "exchange_extensions"]

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


def is_replayable(request: httpx.Request) -> bool:
    return request.method in IDEMPOTENT_METHODS or request.extensions.get(_REPLAYABLE) is True


class _ResponseStream(httpx.AsyncByteStream):
    __slots__ = ("_cycle", "_released")

    def __init__(self, cycle: ResponseCycle) -> None:
        self._cycle = cycle
        self._released = False

    @property
    def cycle(self) -> ResponseCycle:
        """The exchange whose body this is (the relay may take its chunks with `deliver`)."""
        return self._cycle

    async def __aiter__(self) -> AsyncIterator[bytes]:
        cycle = self._cycle
        while True:
            chunk = await cycle.next_chunk()
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        cycle = self._cycle
        connection = cycle.connection
        if cycle.reusable() and connection.cycle is cycle:
            connection.pool.release(connection)
        else:
            connection.close()


def _may_retry(cycle: ResponseCycle, request: httpx.Request) -> bool:
    """Whether a request that failed on a reused connection can go again on a new one.

    A server that closes a connection with no answer may have closed it while idle (it never saw
    the request) or read the request and died on it: only the first is safe to repeat for a
    request that changes something (a user's message must not be sent twice)."""
    if not cycle.wrote:
        return True  # nothing left the gateway
    if cycle.received_any or not isinstance(request.stream, httpx.ByteStream):
        return False  # an answer had started, or the body was streamed and is gone
    return is_replayable(request)


def _head_of(request: httpx.Request) -> bytes:
    head = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        head += [name, b": ", value, b"\r\n"]
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
        origin = (
            request.url.scheme,
            request.url.host,
            request.url.port or (443 if request.url.scheme == "https" else 80),
        )
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        deadline = head_deadline_of(request)
        connection, reused = await self._acquire(origin, _connect_timeout(timeouts.get("connect"), deadline))
        cycle = connection.start_cycle()
        try:
            return await self._exchange(cycle, request, timeouts.get("read"), deadline)
        except (httpx.RemoteProtocolError, httpx.WriteError):
            if not (reused and _may_retry(cycle, request)) or isinstance(cycle.error, InvalidResponse):
                raise
        # The keep-alive race: the server closed this idle connection as the request went out.
        connection, _ = await self._acquire(origin, _connect_timeout(timeouts.get("connect"), deadline), fresh=True)
        return await self._exchange(connection.start_cycle(), request, timeouts.get("read"), deadline)

    async def _exchange(
        self, cycle: ResponseCycle, request: httpx.Request, read_timeout: float | None, deadline: float | None
    ) -> httpx.Response:
        connection = cycle.connection
        cycle.watch(deadline, read_timeout)
        try:
            try:
                if isinstance(request.stream, httpx.ByteStream):
                    await connection.write(_head_of(request) + b"".join(request.stream))
                else:
                    await self._send_streamed(cycle, request)
            except httpx.WriteError:
                # The connection is going down. An answer that came before it still counts (a 413
                # sent before a reset); without one, the head fails as the connection is lost.
                pass
            await cycle.head
        except BaseException:
            connection.close()
            raise
        return httpx.Response(
            cycle.status,
            headers=cycle.headers,
            stream=_ResponseStream(cycle),
            # The reason phrase as sent (httpcore reports it too; without it httpx looks one up).
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": cycle.reason},
            # Not `request=`: a stream's response lives as long as the stream, and the request (its
            # body, the user's message, included) has no use once sent (docs/performance.md).
        )

    async def _send_streamed(self, cycle: ResponseCycle, request: httpx.Request) -> None:
        """Send a streamed body (an upload) while watching for the answer: one that refuses the
        body, or closes the connection, before the body is all out stops the upload (RFC 9112
        9.5), even while the client is slow to send the next piece; so does a failure (the head
        deadline). The connection cannot carry another request then."""
        sending = asyncio.ensure_future(self._write_streamed(cycle.connection, request))
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

    async def _write_streamed(self, connection: UpstreamConnection, request: httpx.Request) -> None:
        await connection.write(_head_of(request))
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
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
