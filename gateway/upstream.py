"""The exchanges with the ChatKit backend, and the admission rules in front of them.

Requests go straight to two httpx transports (the gateway's own, `transport.py`, unless the app
was given another), made once with the app:

- the **JSON transport** serves ops that answer one JSON object. A `Gate` of
  `upstream.max_connections` places admits them, which bounds the backend connections they hold;
  a wait for it counts against the response deadline. A small answer is read whole and sent to
  the client in one message;
- the **stream transport** serves ops that stream, and uploads. A stream may be quiet for minutes
  while a tool runs, so its silence bound is its own (`upstream.stream_idle_timeout`);
  `upstream.max_streams` caps how many are open (503 beyond it: `streams.py`).

Both: response headers due within `connect_timeout` + `response_timeout` (the transport's head
deadline); TLS with the one context `tls.py` makes at start-up. The request goes to
`transport.handle_async_request` itself, without an `httpx.AsyncClient` around it: the gateway
used none of what a client adds (redirects are not followed, there is no auth flow, no cookie jar,
no proxy or `.netrc` from the environment) and its layers were a tenth of a request's CPU
(docs/performance.md). On the gateway's own transport, a JSON op goes further: through the
transport's `exchange` entry point, without httpx's request and response objects at all (the
"Third round" there). Every httpx exception is translated here (`_exchange_error` before the
response head, `_body_error` for a small body read whole) into a `GatewayError`. The answer goes
back to the client through `relay.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable
from typing import Any, NamedTuple

import httpx
from starlette.types import Message

from .config import UpstreamConfig
from .cycle import ResponseCycle
from .errors import GatewayError, UpstreamBadResponse, UpstreamTimeout, UpstreamTLSFailed, UpstreamUnavailable
from .headers import Headers
from .outbound import framed_headers, framed_request
from .relay import relay_body, relay_response
from .tls import upstream_ssl_context
from .transport import (
    HTTP11Transport,
    InvalidResponse,
    StreamedResponse,
    TLSFailure,
    exchange_extensions,
    origin_of,
    read_whole,
    response_of,
)

__all__ = ["Gate", "Upstream", "UpstreamAnswer", "read_answer"]

logger = logging.getLogger("chatkit_gateway.relay")  # the name operators filter on

# A JSON answer up to this size is read whole and sent in one message: cheaper than streaming it
# (docs/BENCHMARKS.md, "Measured design choices").
SMALL_BODY_BYTES = 1024 * 1024
WARM_ROUNDS = 10


class UpstreamAnswer(NamedTuple):
    """The backend's answer to a JSON op: its status, its headers (names lower-cased, as
    received), and either its body, when it was small enough to be read whole, or the response
    whose body the caller streams (and closes)."""

    status: int
    headers: Headers
    body: bytes | None
    response: httpx.Response | StreamedResponse | None


class Gate:
    """`upstream.max_connections` places for JSON exchanges, first come first served (as the
    `asyncio.Semaphore` it replaces), taken without a coroutine or a timeout context when one is
    free, and waited for under one timer when none is (docs/performance.md, "Third round")."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, places: int) -> None:
        self._free = places
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        """Take a free place, if there is one and nobody waits for it."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self, deadline: float) -> None:
        """Wait for a place until `deadline` (loop time); `TimeoutError` beyond it. The deadline is
        one timer on the waiter, not an `asyncio.timeout` context around the wait."""
        if self.try_take():
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed a place just as the wait was cancelled: the next one gets it
            else:
                waiter.cancel()
                if waiter in self._waiters:  # `release` may have dropped it already, done
                    self._waiters.remove(waiter)
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        """A place back: to the first waiter still waiting, else to the free ones."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Upstream:
    """The transports to the ChatKit backend and the admission rules in front of them."""

    def __init__(self, config: UpstreamConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.header_deadline = config.connect_timeout + config.response_timeout
        self.url = httpx.URL(config.url)  # parsed once, not per request
        # (host, port, URL) of the ChatKit endpoint, as a trace's upstream span names them.
        self._origin = origin_of(self.url)
        self.endpoint = (self.url.host, self._origin[2], str(self.url))
        self._netloc = self.url.netloc
        self._target = self.url.raw_path  # the request target (path and query), as sent
        # httpx's `timeout` extension, built once; the transport reads `connect` and `read` only.
        self._json_timeout = {"connect": config.connect_timeout, "read": config.response_timeout}
        # No read timeout by default would let a backend that answers headers and then hangs hold a
        # stream forever; ChatKit streams can be quiet for minutes (tools), so the bound is long.
        self._stream_timeout = {"connect": config.connect_timeout, "read": config.stream_idle_timeout or None}
        self._gate = Gate(config.max_connections)
        # Why the last warm-up failed on TLS (None when it did not): `/readyz` names it.
        self.tls_error: str | None = None
        # Pool sizes live in the transports, timeouts in each request's extensions.
        tls = upstream_ssl_context(config)  # one for both transports, made here at start-up

        def own_transport(max_keepalive: int) -> HTTP11Transport:
            return HTTP11Transport(
                max_keepalive=max_keepalive,
                keepalive_expiry=config.keepalive_expiry,
                ssl_context=tls,
                server_name=config.server_name,
                max_header_bytes=config.max_header_bytes,
            )

        self.json_transport = transport or own_transport(config.max_connections)
        self.stream_transport = transport or own_transport(config.stream_keepalive)

    async def aclose(self) -> None:
        await self.json_transport.aclose()
        if self.stream_transport is not self.json_transport:
            await self.stream_transport.aclose()

    async def warm(self) -> None:
        """Before ready: open one connection per transport, through the same code a request runs
        (an `OPTIONS`, relayed to nowhere), so the first request pays no handshake and no
        first-run cost of the relay path. A TLS failure is kept in `tls_error`."""

        async def discard(message: Message) -> None:
            return None

        async def never(_: float = 0) -> Message:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        # A few rounds: Python specialises a function's bytecode after its first runs.
        for _ in range(WARM_ROUNDS):
            try:
                answer = await self.send_json(self.url, [], b"", method="OPTIONS")
                if answer.body is not None:
                    await relay_body(answer.status, answer.headers, answer.body, discard)
                elif answer.response is not None:
                    await relay_response(answer.response, discard, never)
                async with asyncio.timeout(self.config.connect_timeout):
                    response = await self.send_stream(self.url, [], b"", method="OPTIONS")
                    await relay_response(response, discard, never)
            except UpstreamTLSFailed as exc:
                self.tls_error = exc.reason
                return
            except (GatewayError, TimeoutError) as exc:
                self.tls_error = None
                logger.warning("upstream warm-up failed: %s", type(exc).__name__)
                return
        self.tls_error = None

    async def send_json(
        self,
        url: str | httpx.URL,
        headers: Headers,
        content: bytes,
        *,
        method: str = "POST",
        replayable: bool = False,
    ) -> UpstreamAnswer:
        """Send through the gated JSON transport; a small non-stream answer comes back read whole.

        The response headers are due `header_deadline` after the call, waiting for the gate
        included; after them, the body may not stall for longer than `response_timeout`.
        `replayable`: sending the request twice changes nothing (the transport may then retry it
        after the keep-alive race)."""
        deadline = asyncio.get_running_loop().time() + self.header_deadline
        if not self._gate.try_take():
            try:
                await self._gate.take(deadline)
            except TimeoutError:
                raise UpstreamTimeout() from None
        try:
            transport = self.json_transport
            if isinstance(transport, HTTP11Transport):
                return await self._exchange_json(transport, method, url, headers, content, deadline, replayable)
            extensions = exchange_extensions(self._json_timeout, head_deadline=deadline, replayable=replayable)
            response = await self._open(transport, method, url, headers, content, extensions)
            answer_headers = [(key.lower(), value) for key, value in response.headers.raw]
            if not _is_small_json(answer_headers):
                return UpstreamAnswer(response.status_code, answer_headers, None, response)
            try:
                # The stream itself, not `aiter_raw()`: no re-chunking of a body read whole anyway.
                body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            except httpx.HTTPError as exc:
                raise _body_error(exc) from None
            finally:
                # Given back at once, read whole or not (a stalled or broken body too).
                await response.aclose()
            return UpstreamAnswer(response.status_code, answer_headers, body, None)
        finally:
            self._gate.release()

    async def _exchange_json(
        self,
        transport: HTTP11Transport,
        method: str,
        url: str | httpx.URL,
        headers: Headers,
        content: bytes,
        deadline: float,
        replayable: bool,
    ) -> UpstreamAnswer:
        """`send_json` on the gateway's own transport: its exchange entry point, without httpx's
        request, response and headers objects (docs/performance.md, "Third round")."""
        cycle = await self._exchange(
            transport, method, url, headers, content, self.config.response_timeout, deadline, replayable
        )
        if not _is_small_json(cycle.headers):
            return UpstreamAnswer(cycle.status, cycle.headers, None, response_of(cycle))
        try:
            body = await read_whole(cycle)  # the connection is given back, read whole or not
        except httpx.HTTPError as exc:
            raise _body_error(exc) from None
        return UpstreamAnswer(cycle.status, cycle.headers, body, None)

    async def _exchange(
        self,
        transport: HTTP11Transport,
        method: str,
        url: str | httpx.URL,
        headers: Headers,
        content: bytes,
        read_timeout: float | None,
        deadline: float,
        replayable: bool = False,
    ) -> ResponseCycle:
        """One exchange through the transport's entry point, up to the response head; its failures
        as the client's errors."""
        if url is self.url:
            origin, target, host = self._origin, self._target, self._netloc
        else:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
            origin = origin_of(parsed)
            target, host = parsed.raw_path, parsed.netloc
        try:
            return await transport.exchange(
                origin,
                method,
                target,
                framed_headers(method, headers, content, host=host),
                content,
                connect_timeout=self.config.connect_timeout,
                read_timeout=read_timeout,
                deadline=deadline,
                replayable=replayable,
            )
        except httpx.HTTPError as exc:
            raise _exchange_error(exc) from None

    async def send_stream(
        self, url: str | httpx.URL, headers: Headers, content: bytes | AsyncIterable[bytes], *, method: str = "POST"
    ) -> httpx.Response:
        """Send through the stream transport; the caller relays the body and closes the response.
        (`upstream.max_streams` is admitted by the caller's `OpenStreams`, streams.py.)"""
        deadline = asyncio.get_running_loop().time() + self.header_deadline
        extensions = exchange_extensions(self._stream_timeout, head_deadline=deadline)
        return await self._open(self.stream_transport, method, url, headers, content, extensions)

    async def open_stream(self, headers: Headers, content: bytes) -> httpx.Response | StreamedResponse:
        """`send_stream` of a ChatKit request to the backend's endpoint: on the gateway's own
        transport, through its exchange entry point without httpx's objects (docs/performance.md)."""
        transport = self.stream_transport
        if not isinstance(transport, HTTP11Transport):
            return await self.send_stream(self.url, headers, content)
        deadline = asyncio.get_running_loop().time() + self.header_deadline
        read_timeout = self._stream_timeout["read"]
        cycle = await self._exchange(transport, "POST", self.url, headers, content, read_timeout, deadline)
        return StreamedResponse(cycle)

    async def _open(
        self,
        transport: httpx.AsyncBaseTransport,
        method: str,
        url: str | httpx.URL,
        headers: Headers,
        content: bytes | AsyncIterable[bytes],
        extensions: dict[str, Any],
    ) -> httpx.Response:
        target = url if isinstance(url, httpx.URL) else httpx.URL(url)
        host = self._netloc if target is self.url else target.netloc  # the backend's Host made once
        request = framed_request(method, target, headers, content, extensions, host=host)
        try:
            return await transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            raise _exchange_error(exc) from None


def _exchange_error(exc: httpx.HTTPError) -> GatewayError:
    """What a failed exchange (no response head) is to the client."""
    if isinstance(exc, InvalidResponse):
        logger.warning("upstream answered with invalid HTTP: %s", exc)
        return UpstreamBadResponse()
    if isinstance(exc, TLSFailure):
        logger.warning("upstream TLS failed: %s", exc)
        return UpstreamTLSFailed(str(exc))
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout()
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return UpstreamUnavailable()
    return UpstreamBadResponse()


def _body_error(exc: httpx.HTTPError) -> GatewayError:
    """What a small body that stalled or broke after its head is to the client."""
    return UpstreamTimeout() if isinstance(exc, httpx.TimeoutException) else UpstreamBadResponse()


async def read_answer(response: httpx.Response | StreamedResponse, limit: int) -> bytes:
    """A whole (non-small) answer body, for a step that must see all of it; 502 beyond `limit`."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise UpstreamBadResponse()
            chunks.append(chunk)
    except httpx.TimeoutException:
        raise UpstreamTimeout() from None
    except httpx.HTTPError:
        raise UpstreamBadResponse() from None
    finally:
        await response.aclose()
    return b"".join(chunks)


def _is_small_json(headers: Headers) -> bool:
    """Whether (lower-cased) response headers announce a body that is not an SSE stream and whose
    length is at most `SMALL_BODY_BYTES`."""
    content_type = length = None
    for name, value in headers:
        if name == b"content-type" and content_type is None:
            content_type = value
        elif name == b"content-length" and length is None:
            length = value
    if content_type is not None and content_type.lower().startswith(b"text/event-stream"):
        return False
    return length is not None and length.isdigit() and int(length) <= SMALL_BODY_BYTES
