"""The exchanges with the ChatKit backend, and the admission rules in front of them.

Requests go straight to two httpx transports (the gateway's own, `transport.py`, unless the app
was given another), made once with the app:

- the **JSON transport** serves ops that answer one JSON object. An `asyncio.Semaphore` of
  `upstream.max_connections` admits them, which bounds the backend connections they hold; a wait
  for it counts against the response deadline. A small answer is read whole and sent to the
  client in one message;
- the **stream transport** serves ops that stream, and uploads. A stream may be quiet for minutes
  while a tool runs, so its silence bound is its own (`upstream.stream_idle_timeout`);
  `upstream.max_streams` caps how many are open (503 beyond it: `streams.py`).

Both: response headers due within `connect_timeout` + `response_timeout` (the transport's head
deadline); TLS with the one context `tls.py` makes at start-up. The request goes to
`transport.handle_async_request` itself, without an `httpx.AsyncClient` around it: the gateway
used none of what a client adds (redirects are not followed, there is no auth flow, no cookie jar,
no proxy or `.netrc` from the environment) and its layers were a tenth of a request's CPU
(docs/performance.md). Every httpx exception is translated here, in `Upstream._open` (and, for a
small JSON body, in `send_json`), into a `GatewayError`. The answer goes back to the client
through `relay.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable
from typing import Any, NamedTuple

import httpx
from starlette.types import Message

from .config import UpstreamConfig
from .errors import GatewayError, UpstreamBadResponse, UpstreamTimeout, UpstreamTLSFailed, UpstreamUnavailable
from .headers import Headers
from .outbound import framed_request
from .relay import relay_response
from .tls import upstream_ssl_context
from .transport import HTTP11Transport, InvalidResponse, TLSFailure, exchange_extensions

__all__ = ["Upstream", "UpstreamAnswer", "read_answer"]

logger = logging.getLogger("chatkit_gateway.relay")  # the name operators filter on

# A JSON answer up to this size is read whole and sent in one message: cheaper than streaming it
# (docs/BENCHMARKS.md, "Measured design choices").
SMALL_BODY_BYTES = 1024 * 1024
WARM_ROUNDS = 10


class UpstreamAnswer(NamedTuple):
    """The backend's response, and its body when it was small enough to be read whole (else None:
    the caller streams it, and closes the response)."""

    response: httpx.Response
    body: bytes | None


class Upstream:
    """The transports to the ChatKit backend and the admission rules in front of them."""

    def __init__(self, config: UpstreamConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.header_deadline = config.connect_timeout + config.response_timeout
        self.url = httpx.URL(config.url)  # parsed once, not per request
        # (host, port, URL) of the ChatKit endpoint, as a trace's upstream span names them.
        self.endpoint = (self.url.host, self.url.port or (443 if self.url.scheme == "https" else 80), str(self.url))
        self._netloc = self.url.netloc
        # httpx's `timeout` extension, built once; the transport reads `connect` and `read` only.
        self._json_timeout = {"connect": config.connect_timeout, "read": config.response_timeout}
        # No read timeout by default would let a backend that answers headers and then hangs hold a
        # stream forever; ChatKit streams can be quiet for minutes (tools), so the bound is long.
        self._stream_timeout = {"connect": config.connect_timeout, "read": config.stream_idle_timeout or None}
        self._gate = asyncio.Semaphore(config.max_connections)
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
                response, body = await self.send_json(self.url, [], b"", method="OPTIONS")
                await relay_response(response, discard, never, body=body)
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
        await self._admit(deadline)
        extensions = exchange_extensions(self._json_timeout, head_deadline=deadline, replayable=replayable)
        try:
            response = await self._open(self.json_transport, method, url, headers, content, extensions)
            if not _is_small_json(response):
                return UpstreamAnswer(response, None)
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
            return UpstreamAnswer(response, body)
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
        """Send through the stream transport; the caller relays the body and closes the response.
        (`upstream.max_streams` is admitted by the caller's `OpenStreams`, streams.py.)"""
        deadline = asyncio.get_running_loop().time() + self.header_deadline
        extensions = exchange_extensions(self._stream_timeout, head_deadline=deadline)
        return await self._open(self.stream_transport, method, url, headers, content, extensions)

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
        except InvalidResponse as exc:
            logger.warning("upstream answered with invalid HTTP: %s", exc)
            raise UpstreamBadResponse() from None
        except TLSFailure as exc:
            logger.warning("upstream TLS failed: %s", exc)
            raise UpstreamTLSFailed(str(exc)) from None
        except httpx.TimeoutException:
            raise UpstreamTimeout() from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            raise UpstreamUnavailable() from None
        except httpx.HTTPError:
            raise UpstreamBadResponse() from None


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
