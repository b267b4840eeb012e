"""The exchange with the ChatKit backend, and the relay of its answer to the client.

Two httpx clients over the gateway's own transport (`transport.py`), made once in the lifespan:

- the **JSON client** serves ops that answer one JSON object. An `asyncio.Semaphore` of
  `upstream.max_connections` admits them, which bounds the backend connections they hold; a wait
  for it counts against the response deadline. A small answer is read whole and sent to the
  client in one message;
- the **stream client** serves ops that stream, and uploads. A stream may be quiet for minutes
  while a tool runs, so its silence bound is its own (`upstream.stream_idle_timeout`), and
  `upstream.max_streams` caps how many are open (503 beyond it).

Both: response headers due within `connect_timeout` + `response_timeout` (the transport's head
deadline), `trust_env=False` (no proxy variables or .netrc from the environment), no redirects
followed, no cookie jar. Every httpx exception is translated here, in `Upstream._open` (and, for
a small JSON body, in `send_json`), into a `GatewayError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Protocol

import anyio
import httpx
from starlette.types import Message, Receive, Send

from .config import UpstreamConfig
from .errors import GatewayError, Overloaded, UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from .headers import Headers, header_value, relay_response_headers
from .transport import HTTP11Transport, InvalidResponse

__all__ = ["ChunkWatch", "RelayOutcome", "Upstream", "read_answer", "relay_response", "stream_error_event"]

logger = logging.getLogger("chatkit_gateway.relay")

# A JSON answer up to this size is read whole and sent in one message: measured cheaper than
# streaming it (no chunked encoding, no per-response task group).
SMALL_BODY_BYTES = 1024 * 1024
HEARTBEAT = b": keepalive\n\n"
WARM_ROUNDS = 10
FRAME_END = b"\n\n"


def stream_error_event(message: str, *, allow_retry: bool) -> bytes:
    """One ChatKit `error` event, as the ChatKit client shows it in the chat."""
    event = {"type": "error", "code": "custom", "message": message, "allow_retry": allow_retry}
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + FRAME_END


UPSTREAM_BROKE_EVENT = FRAME_END + stream_error_event(
    "The connection to the assistant was interrupted. Please try again.", allow_retry=True
)
SHUTDOWN_EVENT = FRAME_END + stream_error_event(
    "The server is restarting and ended this reply. Please try again.", allow_retry=True
)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class UpstreamClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` without a cookie jar.

    One client serves every user, so a jar would keep a `Set-Cookie` the backend sent while
    answering one user and send it with the next user's request. (Measured, too: extracting
    cookies was a tenth of a proxied request's CPU.)
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, value: object) -> None:
        return None


_NO_COOKIES = _NoCookies()


def _client(transport: httpx.AsyncBaseTransport) -> UpstreamClient:
    # No proxy variables or .netrc from the environment; redirects are the client's to follow.
    return UpstreamClient(transport=transport, trust_env=False, follow_redirects=False)


class Upstream:
    """The clients to the ChatKit backend and the admission rules in front of them."""

    def __init__(self, config: UpstreamConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.header_deadline = config.connect_timeout + config.response_timeout
        self.url = httpx.URL(config.url)  # parsed once, not per request
        self._netloc = self.url.netloc
        self._json_timeout = httpx.Timeout(
            connect=config.connect_timeout, read=config.response_timeout, write=config.response_timeout, pool=None
        ).as_dict()
        # No read timeout by default would let a backend that answers headers and then hangs hold a
        # stream forever; ChatKit streams can be quiet for minutes (tools), so the bound is long.
        idle = config.stream_idle_timeout or None
        self._stream_timeout = httpx.Timeout(connect=config.connect_timeout, read=idle, write=None, pool=None).as_dict()
        self._gate = asyncio.Semaphore(config.max_connections)
        self._open_streams = 0
        # Pool sizes and timeouts live in the transports and in each request's extensions: with a
        # `transport=`, httpx's own `limits=` and client timeouts would never be read.
        self.json_client = _client(
            transport or HTTP11Transport(max_keepalive=config.max_connections, keepalive_expiry=config.keepalive_expiry)
        )
        self.stream_client = _client(
            transport
            or HTTP11Transport(max_keepalive=config.stream_keepalive, keepalive_expiry=config.keepalive_expiry)
        )

    @property
    def open_streams(self) -> int:
        return self._open_streams

    async def aclose(self) -> None:
        await self.json_client.aclose()
        await self.stream_client.aclose()

    async def warm(self) -> None:
        """Before ready: open one connection per client, through the same code a request runs
        (an `OPTIONS`, relayed to nowhere), so the first request pays no handshake and no
        first-run cost of the relay path."""

        async def discard(message: Message) -> None:
            return None

        async def never(_: float = 0) -> Message:
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        # A few rounds: Python specialises a function's bytecode after its first runs.
        for _ in range(WARM_ROUNDS):
            try:
                response, body = await self.send_json(self.url, [], b"", method="OPTIONS")
                await relay_response(response, discard, never, body=body)
                async with asyncio.timeout(self.config.connect_timeout):
                    response = await self.send_stream(self.url, [], b"", method="OPTIONS")
                    try:
                        await relay_response(response, discard, never)
                    finally:
                        self.release_stream()
            except (GatewayError, TimeoutError) as exc:
                logger.warning("upstream warm-up failed: %s", type(exc).__name__)
                return

    async def send_json(
        self,
        url: str | httpx.URL,
        headers: Headers,
        content: bytes,
        *,
        method: str = "POST",
        replayable: bool = False,
    ) -> tuple[httpx.Response, bytes | None]:
        """Send through the gated JSON client; a small non-stream answer comes back read whole.

        The response headers are due `header_deadline` after the call, waiting for the gate
        included; after them, the body may not stall for longer than `response_timeout`.
        `replayable`: sending the request twice changes nothing (the transport may then retry it
        after the keep-alive race)."""
        deadline = asyncio.get_running_loop().time() + self.header_deadline
        await self._admit(deadline)
        extensions: dict[str, object] = {"timeout": self._json_timeout, "head_deadline": deadline}
        if replayable:
            extensions["replayable"] = True
        try:
            response = await self._open(self.json_client, method, url, headers, content, extensions)
            if not _is_small_json(response):
                return response, None
            try:
                # The stream itself, not `aiter_raw()`: no re-chunking of a body read whole anyway.
                body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            except httpx.TimeoutException:
                raise UpstreamTimeout() from None
            except httpx.HTTPError:
                raise UpstreamBadResponse() from None
            finally:
                # Given back at once, read whole or not (a stalled or broken body too).
                await response.aclose()
            return response, body
        finally:
            self._gate.release()

    async def _admit(self, deadline: float) -> None:
        """A place among `max_connections`; a wait for one counts against the head deadline."""
        if not self._gate.locked():
            await self._gate.acquire()
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self._gate.acquire()
        except TimeoutError:
            raise UpstreamTimeout() from None

    async def send_stream(
        self, url: str | httpx.URL, headers: Headers, content: bytes | AsyncIterable[bytes], *, method: str = "POST"
    ) -> httpx.Response:
        """Send through the stream client; the caller relays the body and closes the response."""
        if self._open_streams >= self.config.max_streams:
            raise Overloaded()
        self._open_streams += 1
        deadline = asyncio.get_running_loop().time() + self.header_deadline
        try:
            extensions = {"timeout": self._stream_timeout, "head_deadline": deadline}
            return await self._open(self.stream_client, method, url, headers, content, extensions)
        except BaseException:
            self._open_streams -= 1
            raise

    def release_stream(self) -> None:
        self._open_streams -= 1

    async def _open(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str | httpx.URL,
        headers: Headers,
        content: bytes | AsyncIterable[bytes],
        extensions: dict[str, object],
    ) -> httpx.Response:
        # The request is made directly rather than by `client.build_request`: no client defaults to
        # merge, so the backend gets exactly the headers the gateway chose. A body in hand (every
        # ChatKit JSON request) gets its `Host` and `Content-Length` here and goes as a `ByteStream`,
        # which skips httpx's header-defaults pass (measured: ~10 us per request); a streamed body
        # (uploads) is framed by httpx.
        if isinstance(content, bytes):
            target = url if isinstance(url, httpx.URL) else httpx.URL(url)
            framed = [(b"host", self._netloc if target is self.url else target.netloc), *headers]
            if content or method in ("POST", "PUT", "PATCH"):
                framed.append((b"content-length", b"%d" % len(content)))
            request = httpx.Request(
                method, target, headers=framed, stream=httpx.ByteStream(content), extensions=extensions
            )
            request.read()  # `request.content` readable, as for any request httpx builds with a body
        else:
            request = httpx.Request(method, url, headers=headers, content=content, extensions=extensions)
        try:
            return await client.send(request, stream=True, auth=NO_AUTH)
        except httpx.PoolTimeout:
            raise Overloaded() from None
        except InvalidResponse:
            logger.warning("upstream answered with invalid HTTP")
            raise UpstreamBadResponse() from None
        except httpx.TimeoutException:
            raise UpstreamTimeout() from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            raise UpstreamUnavailable() from None
        except httpx.HTTPError:
            raise UpstreamBadResponse() from None


# Passed to `send`: no credentials of the client's own (it would otherwise look for some in the URL).
NO_AUTH = httpx.Auth()


def _is_small_json(response: httpx.Response) -> bool:
    content_type = length = None
    for key, value in response.headers.raw:
        name = key.lower()
        if name == b"content-type" and content_type is None:
            content_type = value
        elif name == b"content-length" and length is None:
            length = value
    if content_type is not None and content_type.lower().startswith(b"text/event-stream"):
        return False
    return length is not None and length.isdigit() and int(length) <= SMALL_BODY_BYTES


def _is_sse(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether (lower-cased) response headers announce an SSE stream."""
    value = header_value(headers, b"content-type")
    return value is not None and value.lower().startswith(b"text/event-stream")


def _lower(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(key.lower(), value) for key, value in headers]


@dataclass
class RelayOutcome:
    """What happened on the way back, for the request's log line and metrics."""

    status: int = 0
    streamed: bool = False
    bytes_out: int = 0
    events: int = 0
    upstream_broke: bool = False
    client_disconnected: bool = False
    stopped: bool = False
    first_byte_at: float | None = None
    refused: str | None = None  # the error code a `ChunkWatch` ended the stream with


class ChunkWatch(Protocol):
    """Sees an SSE stream's chunks before they are relayed, until it turns `active` off.

    `feed` returns the bytes that may go to the client now (it may hold back an unfinished event)
    or raises a `GatewayError`, which ends the stream with a ChatKit error event; `rest` returns
    what may still go out when the stream ends."""

    active: bool

    async def feed(self, chunk: bytes) -> bytes: ...

    async def rest(self) -> bytes: ...


async def read_answer(response: httpx.Response, limit: int) -> bytes:
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


async def relay_response(
    response: httpx.Response,
    send: Send,
    receive: Receive,
    *,
    body: bytes | None = None,
    extra_headers: Headers | None = None,
    heartbeat_seconds: float = 0.0,
    stop: asyncio.Future[None] | None = None,
    outcome: RelayOutcome | None = None,
    watch: ChunkWatch | None = None,
) -> RelayOutcome:
    """Relay status, headers and body; stream bodies chunk by chunk as they arrive.

    The upstream response is closed in every case, and at once when the client disconnects
    (ChatKit's stop button is a disconnect; the backend then saves the partial answer). When
    `stop` completes (the end of a shutdown's grace), a stream is ended with a ChatKit error event.
    `outcome`, when given, is filled in as the relay goes, so a caller sees it even if cancelled.
    `watch`, for an SSE stream, sees its chunks first (see `ChunkWatch`).
    """
    outcome = outcome or RelayOutcome()
    outcome.status, outcome.streamed = response.status_code, body is None
    try:
        sse = await _send_start(response, send, extra_headers)
        outcome.first_byte_at = time.monotonic()
        if body is not None:
            await send({"type": "http.response.body", "body": body})
            outcome.bytes_out = len(body)
            return outcome
        await _pump(
            response,
            send,
            receive,
            outcome,
            sse=sse,
            heartbeat_seconds=heartbeat_seconds,
            stop=stop,
            watch=watch if sse else None,
        )
        return outcome
    finally:
        if not response.is_closed:
            with anyio.CancelScope(shield=True):
                await response.aclose()


async def _send_start(response: httpx.Response, send: Send, extra_headers: Headers | None) -> bool:
    """Send the status and headers; whether the body is an SSE stream. (Its own function so the
    header lists are freed before a long stream starts.)"""
    raw_headers = _lower(response.headers.raw)
    sse = _is_sse(raw_headers)
    headers = relay_response_headers(raw_headers, sse=sse)
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    return sse


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _pump(
    response: httpx.Response,
    send: Send,
    receive: Receive,
    outcome: RelayOutcome,
    *,
    sse: bool,
    heartbeat_seconds: float,
    stop: asyncio.Future[None] | None,
    watch: ChunkWatch | None = None,
) -> None:
    """Forward body chunks as they arrive, until the body ends, the client leaves, or `stop`.

    One extra task per stream waits for the client's disconnect and cancels this one (plain
    asyncio, not an anyio task group: measured, the group cost ~8 KiB and ~10 us per stream).
    """
    tail = FRAME_END
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    current = asyncio.current_task()
    assert current is not None
    finished = False

    def on_disconnect(watcher: asyncio.Future[None]) -> None:
        if finished or watcher.cancelled() or watcher.exception() is not None:
            return
        outcome.client_disconnected = True
        current.cancel()

    def on_stop(future: asyncio.Future[None]) -> None:
        if finished or outcome.client_disconnected:
            return
        outcome.stopped = True
        current.cancel()

    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    watcher.add_done_callback(on_disconnect)
    if stop is not None:
        stop.add_done_callback(on_stop)
    heartbeat = None
    if sse and heartbeat_seconds > 0:

        async def keep_alive() -> None:
            nonlocal last_write
            while True:
                await asyncio.sleep(max(0.05, last_write + heartbeat_seconds - loop.time()))
                # A comment only between frames: a chunk may end mid-event.
                if loop.time() - last_write >= heartbeat_seconds and tail == FRAME_END:
                    await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                    last_write = loop.time()

        heartbeat = asyncio.ensure_future(keep_alive())
    try:
        try:
            async for chunk in response.aiter_raw():
                if watch is not None:
                    try:
                        chunk = await watch.feed(chunk)
                    except GatewayError as refusal:
                        outcome.refused = refusal.code
                        event = FRAME_END + stream_error_event(refusal.message, allow_retry=True)
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                        break
                    if not watch.active:
                        watch = None
                if not chunk:
                    continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                outcome.bytes_out += len(chunk)
                if sse:
                    outcome.events += chunk.count(FRAME_END)
                    tail = (tail + chunk)[-2:]
                    last_write = loop.time()
            if watch is not None and outcome.refused is None and (held := await watch.rest()):
                await send({"type": "http.response.body", "body": held, "more_body": True})
        except httpx.HTTPError as exc:
            # The backend broke after its headers went out: the status cannot change any more. An
            # SSE stream is closed cleanly with an in-band error event the chat can show; any other
            # body is left incomplete, so the client sees a broken response, not a short one.
            outcome.upstream_broke = True
            logger.warning("upstream stream broke: %s", type(exc).__name__)
            if not sse:
                return
            if watch is not None and outcome.refused is None and (held := await watch.rest()):
                await send({"type": "http.response.body", "body": held, "more_body": True})
            await send({"type": "http.response.body", "body": UPSTREAM_BROKE_EVENT, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if (outcome.client_disconnected or outcome.stopped) and current.uncancel() == 0:
            # Our own cancellation: the client left, or the shutdown grace is over.
            if outcome.stopped and not outcome.client_disconnected:
                finished = True
                if sse:
                    await send({"type": "http.response.body", "body": SHUTDOWN_EVENT, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            return
        raise
    finally:
        finished = True
        if stop is not None:
            stop.remove_done_callback(on_stop)
        watcher.cancel()
        if heartbeat is not None:
            heartbeat.cancel()
