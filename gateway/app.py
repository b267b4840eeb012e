"""The gateway application: one request, one readable path.

A ChatKit request goes, in this order, through:

1. the method and content-type checks (405, 415);
2. credentials and their verification (401);
3. the origin check for cookie credentials (403);
4. per-user limits (429);
5. reading the body within its size limit (413) and parsing it (400);
6. the body rewrite: authoritative identity and page context in `metadata`;
7. the relay to the ChatKit backend, streaming its answer back.

Steps 2-4 and 6 are filled in by the modules named after them; each step either passes the request
on or raises a `GatewayError`, which `send_error` turns into the JSON error body.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from .body import ClientDisconnected, read_body
from .chatkit import parse_chatkit_request, require_json_content_type
from .clock import SYSTEM_CLOCK, Clock
from .config import GatewayConfig
from .errors import GatewayError, MethodNotAllowed, NotFound
from .headers import (
    FORWARDED_REQUEST_HEADERS,
    Headers,
    TrustedProxies,
    forwarded_headers,
    request_id_from,
    upstream_request_headers,
)
from .relay import Upstream, relay_response
from .responses import send_error
from .uploads import UploadEndpoint

__all__ = ["Gateway", "Runtime", "create_app"]

logger = logging.getLogger("chatkit_gateway")


@dataclass
class Runtime:
    """What the lifespan makes and closes: the resources every request shares."""

    config: GatewayConfig
    clock: Clock
    transport: httpx.AsyncBaseTransport | None = None
    trusted_proxies: TrustedProxies = field(init=False)
    upstream: Upstream | None = None
    ready: bool = False
    draining: bool = False

    def __post_init__(self) -> None:
        self.trusted_proxies = TrustedProxies(self.config.server.trusted_proxies)

    def upstream_or_fail(self) -> Upstream:
        if self.upstream is None:
            raise RuntimeError("the gateway's lifespan has not started")
        return self.upstream

    def base_headers(self, scope: Scope, request_id: str) -> Headers:
        """Headers every upstream request carries: the allowlisted client headers plus the gateway's."""
        headers: Headers = scope["headers"]
        client = scope.get("client")
        result = upstream_request_headers(headers, allow=FORWARDED_REQUEST_HEADERS)
        result.append((b"x-request-id", request_id.encode("ascii")))
        result.append((b"accept-encoding", b"identity"))
        result.extend(
            forwarded_headers(
                headers, peer=client[0] if client else None, scheme=scope["scheme"], trusted=self.trusted_proxies
            )
        )
        return result


class ChatKitEndpoint:
    """`POST {server.chatkit_path}`: the ChatKit protocol endpoint (pure ASGI, streams untouched)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = scope["headers"]
        request_id = request_id_from(headers)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(headers={"Allow": "POST, OPTIONS"})
            require_json_content_type(headers)
            body = await read_body(receive, headers, self.config.server.max_body_bytes)
            request = parse_chatkit_request(body)
            await self._relay(scope, receive, send, request.raw, request.streaming, request_id)
        except GatewayError as error:
            await send_error(send, error, request_id)
        except ClientDisconnected:
            return
        except Exception:
            # Nothing a client sends should get here; if something does, it gets a JSON 500 and
            # the log gets the traceback (never the request's credentials or body).
            logger.exception("unhandled error in the ChatKit endpoint")
            with contextlib.suppress(RuntimeError):  # the response may have started already
                await send_error(send, GatewayError(), request_id)

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, streaming: bool, request_id: str
    ) -> None:
        runtime = self.runtime
        upstream = runtime.upstream_or_fail()
        headers = runtime.base_headers(scope, request_id)
        extra = [(b"x-request-id", request_id.encode("ascii"))]
        if not streaming:
            response, small_body = await upstream.send_json(self.config.upstream.url, headers, body)
            await relay_response(response, send, receive, body=small_body, extra_headers=extra)
            return
        response = await upstream.send_stream(self.config.upstream.url, headers, body)
        try:
            await relay_response(
                response,
                send,
                receive,
                extra_headers=extra,
                heartbeat_seconds=self.config.upstream.heartbeat_seconds,
            )
        finally:
            upstream.release_stream()


def _json(status: int, payload: dict[str, object]) -> Response:
    return JSONResponse(payload, status_code=status, headers={"cache-control": "no-store"})


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send_error(send, NotFound())


class Gateway:
    """The ASGI application: the upload prefix, then exact routes, then a JSON 404."""

    def __init__(self, runtime: Runtime, router: Router, uploads: ASGIApp) -> None:
        self.runtime = runtime
        self.router = router
        self.uploads = uploads
        self.uploads_path = runtime.config.server.uploads_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.uploads_path):
            await self.uploads(scope, receive, send)
            return
        await self.router(scope, receive, send)


def create_app(
    config: GatewayConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Gateway:
    """Build the gateway. `transport` replaces the network to the backend; `clock` replaces time."""
    runtime = Runtime(config=config, clock=clock, transport=transport)

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        runtime.upstream = Upstream(config.upstream, transport=transport)
        try:
            await runtime.upstream.warm()
            runtime.ready = True
            logger.info("gateway ready: upstream %s", config.upstream.url)
            yield
        finally:
            runtime.ready = False
            await runtime.upstream.aclose()

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        if runtime.draining:
            return _json(503, {"status": "draining"})
        if not runtime.ready:
            return _json(503, {"status": "starting"})
        return _json(200, {"status": "ready"})

    routes: list[BaseRoute] = [
        Route(config.server.chatkit_path, ChatKitEndpoint(runtime)),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    router = Router(routes, redirect_slashes=False, default=not_found, lifespan=lifespan)
    return Gateway(runtime, router, UploadEndpoint(runtime))
