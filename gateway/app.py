"""The gateway application: the routes, and one ChatKit request's path read top to bottom.

Only HTTP is served (a WebSocket handshake is refused). Every request's target and header block
are bounded first (414, 431); CORS preflights are answered next, on every route (`cors.py`); then:

| path | answered by |
| --- | --- |
| `{server.chatkit_path}` | `ChatKitEndpoint`, below |
| `{server.uploads_path}REST` | `UploadEndpoint` (`uploads.py`) |
| `/auth/verify`, `/auth/verify/...` | `ForwardAuthEndpoint` (`forward_auth.py`) |
| `/healthz`, `/readyz`, `/metrics`, `/chatkit-gateway.js` | `probes.py` |
| anything else | a JSON 404 |

A ChatKit request goes, in this order, through (the numbers are those of `ChatKitEndpoint.handle`):

1. the method and content-type checks (405, 415);
2. credentials and their verification (401, `auth/`, through `Runtime.authenticate`);
3. the origin check for cookie credentials (403, `auth/origin.py`);
4. reading the body within its size limit (413) and parsing it (400, `chatkit.py`), then the
   user's limits, which depend on the op (429, `ratelimit.py`), then ownership: every thread or
   attachment id the request names must be the user's (404, `ownership/`);
5. the rewrite: authoritative identity and page context in the body's `metadata`, and the headers
   that go with it (`outbound.py`, with `chatkit.py`, `identity.py`, `pagecontext.py`);
6. the exchange with the ChatKit backend (`upstream.py`, `transport.py`) and the relay of its
   answer as it arrives (`relay.py`); a stream first takes one of the user's concurrent streams
   (429) and a place among the gateway's open streams (503 beyond `upstream.max_streams`,
   `streams.py`); the owners of new threads and attachments are recorded on the way, before the
   answer that carries their ids is relayed (`ownership/`).

Every endpoint runs inside `Endpoint` (`endpoint.py`): a step either passes the request on or
raises a `GatewayError`, which becomes the JSON error body, and `observe.py` writes the request's
log line and metrics when it ends. What requests share lives in `runtime.py`. The whole is drawn
in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from itertools import chain
from typing import TYPE_CHECKING, NamedTuple

import httpx
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from .backend_sdk import body_sha256
from .body import read_body
from .chatkit import parse_chatkit_request, require_json_content_type, rewrite_body
from .clock import SYSTEM_CLOCK, Clock
from .config import GatewayConfig
from .cors import CrossOrigin, has_origin
from .endpoint import Endpoint
from .errors import AuthError, GatewayError, HeadersTooLarge, MethodNotAllowed, NotFound, NotOwned, URITooLong
from .forward_auth import ForwardAuthEndpoint
from .headers import Headers
from .identity import Identity
from .observe import Exchange
from .outbound import request_id_from
from .ownership import AnswerPlan
from .probes import browser_helper_endpoint, healthz, metrics_endpoint, readyz_endpoint
from .relay import (
    DirectSource,
    RelayOutcome,
    StreamStop,
    direct_body_of,
    relay_body,
    relay_response,
    stream_error_event,
)
from .responses import send_error
from .revocation.admin import AdminEndpoint
from .revocation.backchannel import BackchannelLogoutEndpoint
from .runtime import Runtime
from .tokens.wellknown import DISCOVERY_PATH, JWKS_PATH, well_known_documents
from .uploads import UploadEndpoint
from .upstream import UpstreamAnswer, read_answer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["Gateway", "create_app"]

logger = logging.getLogger("chatkit_gateway")

Stop = asyncio.Future[StreamStop]
# A JSON answer ownership must read whole (a `threads.list` page to filter) may be this large.
MAX_READ_ANSWER_BYTES = 32 * 1024 * 1024
# The longest request target (path, `?` and query, in bytes) served: RFC 9112 3 recommends
# supporting 8,000 octets; the upload URL the gateway builds from a longer one can exceed what
# httpx accepts (65,536), which used to end in a plain-text 500.
MAX_REQUEST_TARGET_BYTES = 8 * 1024
# Enough for any op's `type` near the start of a body; an unauthenticated client gets no more
# of the gateway's reading and parsing than this (with `auth.stream_errors`).
MAX_REFUSED_BODY_BYTES = 64 * 1024
SSE_ERROR_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


class RewrittenRequest(NamedTuple):
    """The ChatKit request as it goes upstream: its body rewritten, and what its op implies."""

    streaming: bool
    read_only: bool
    body: bytes
    injected: dict[str, object]  # what the gateway wrote into `metadata` (the signed identity covers it)
    plan: AnswerPlan | None  # what ownership learns from the answer (None: ownership is off)


class ChatKitEndpoint(Endpoint):
    """`POST {server.chatkit_path}`: the ChatKit protocol endpoint (pure ASGI, streams untouched)."""

    route = "chatkit"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime.observer, tracing=runtime.tracing, http_route=runtime.config.server.chatkit_path)
        self.runtime = runtime
        self.config = runtime.config

    async def handle(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        headers: Headers = scope["headers"]
        # Step 1.
        if scope["method"] != "POST":
            raise MethodNotAllowed(headers={"Allow": "POST, OPTIONS"})
        require_json_content_type(headers)
        # Steps 2 and 3.
        try:
            principal, identity = await self.runtime.authenticate(headers, exchange.trace)
        except AuthError as error:
            exchange.status, exchange.error = error.status, error.code
            await self._refuse(error, scope, receive, send, exchange.request_id)
            return
        exchange.user_id, exchange.source = identity.user_id, principal.source
        # Steps 4 and 5.
        direct = direct_body_of(scope)
        rewritten = await self._rewrite(receive, headers, identity, exchange, own_cycle(direct, receive=receive))
        tokens = self.runtime.tokens
        # The signed identity and the assertion both bind the body: one hash for the two.
        digest = body_sha256(rewritten.body) if tokens is not None and tokens.assertions else None
        upstream_headers = self.runtime.outbound.chatkit_headers(
            scope,
            exchange.request_id,
            principal,
            identity,
            metadata=rewritten.injected,
            body=rewritten.body,
            body_digest=digest,
        )
        if exchange.trace is not None:
            upstream_headers.extend(exchange.trace.upstream_headers("POST", *self.runtime.upstream.endpoint))
        if tokens is not None:
            # The assertion and tool tokens (`tokens/`); an exchange at the IdP may fail (502) here.
            upstream_headers += await tokens.chatkit_headers(
                principal, identity, exchange.request_id, rewritten.body, digest
            )
        # Step 6.
        plan = rewritten.plan
        if not rewritten.streaming:
            answer = await self._open(rewritten, upstream_headers)
            del rewritten, upstream_headers, principal, identity  # see below
            await self._relay(answer, receive, send, exchange, plan, direct=direct)
            return
        slot = await self.runtime.limiter.open_stream(identity.user_id)
        try:
            # The session's end is watched before the upstream is asked, so a revocation meanwhile counts.
            async with self.runtime.streams:
                with self.runtime.session_end(principal) as stop:
                    answer = await self._open(rewritten, upstream_headers)
                    # Nothing of the request is needed while the answer streams back: let it go,
                    # its header list too once the head is out (CORS reads `Origin` for the head),
                    # the credential in it among them: the server's scope would hold it for as long
                    # as the stream lasts.
                    del rewritten, upstream_headers, principal, identity
                    await self._relay(answer, receive, send, exchange, plan, stop, direct, headers.clear)
        finally:
            await slot.close()

    async def _rewrite(
        self, receive: Receive, headers: Headers, identity: Identity, exchange: Exchange, cycle: DirectSource | None
    ) -> RewrittenRequest:
        """Steps 4 and 5: read and check the body, apply the user's limits (which depend on the op),
        check ownership, write the gateway's metadata into the body (returned too: the signed
        identity covers it).

        (A function of its own, so the parsed body is freed before a long stream starts.)"""
        raw = await read_body(
            receive, headers, self.config.server.max_body_bytes, self.config.server.body_timeout_seconds, cycle
        )
        exchange.bytes_in = len(raw)
        request = parse_chatkit_request(raw)
        exchange.set_op(request.op)
        if exchange.trace is not None:
            params = request.body.get("params")
            thread_id = params.get("thread_id") if isinstance(params, dict) else None
            exchange.trace.identify(request.op, identity.user_id, thread_id)
        await self.runtime.limiter.admit(identity.user_id, message=request.streaming)
        plan = None
        if self.runtime.ownership is not None:
            try:
                plan = await self.runtime.ownership.check(identity.user_id, request)
            except NotOwned:
                exchange.ownership = "denied"
                raise
        injected = self.runtime.outbound.injected_metadata(
            headers, request.body.get("metadata"), identity, exchange.request_id
        )
        body = rewrite_body(request, injected, plain=identity.plain)
        return RewrittenRequest(request.streaming, request.read_only, body, injected, plan)

    async def _refuse(self, error: AuthError, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """A 401, or with `auth.stream_errors` an in-chat error event for streaming ops."""
        if self.config.auth.stream_errors:
            with contextlib.suppress(GatewayError):
                request = parse_chatkit_request(
                    await read_body(
                        receive, scope["headers"], MAX_REFUSED_BODY_BYTES, self.config.server.body_timeout_seconds
                    )
                )
                if request.streaming:
                    headers = [*SSE_ERROR_HEADERS, (b"x-request-id", request_id.encode())]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send(
                        {"type": "http.response.body", "body": stream_error_event(error.message, allow_retry=False)}
                    )
                    return
        await send_error(send, error, request_id)

    async def _open(self, request: RewrittenRequest, headers: Headers) -> UpstreamAnswer:
        """Step 6: send upstream; a small JSON answer comes back read whole."""
        upstream = self.runtime.upstream
        if not request.streaming:
            return await upstream.send_json(upstream.url, headers, request.body, replayable=request.read_only)
        response = await upstream.open_stream(headers, request.body)
        return UpstreamAnswer(response.status_code, [], None, response)

    async def _relay(
        self,
        answer: UpstreamAnswer,
        receive: Receive,
        send: Send,
        exchange: Exchange,
        plan: AnswerPlan | None,
        stop: Stop | None = None,
        direct: Callable[[], DirectSource | None] | None = None,
        headed: Callable[[], None] | None = None,
    ) -> None:
        """Step 6, continued: relay the answer (small JSON whole, anything else as it arrives); a
        stream gets the heartbeat and ends when `stop` does."""
        status, headers, body, response = answer
        if exchange.trace is not None:
            exchange.trace.upstream_answered(status)
        extra = [(b"x-request-id", exchange.request_id.encode("ascii"))]
        outcome = RelayOutcome()
        ownership = self.runtime.ownership
        try:
            if stop is None:
                if plan is not None:
                    body, headers = await self._owned_answer(plan, answer)
                if body is not None:
                    cycle = own_cycle(direct, send=send)
                    await relay_body(status, headers, body, send, extra_headers=extra, outcome=outcome, cycle=cycle)
                else:
                    assert response is not None  # an answer without its body in hand streams
                    await relay_response(response, send, receive, extra_headers=extra, outcome=outcome)
            else:
                assert response is not None
                heartbeat = self.config.upstream.heartbeat_seconds
                await relay_response(
                    response,
                    send,
                    receive,
                    extra_headers=extra,
                    heartbeat_seconds=heartbeat,
                    stop=stop,
                    outcome=outcome,
                    watch=ownership.stream_watch(plan) if ownership is not None and plan is not None else None,
                    direct=direct,
                    headed=headed,
                )
        finally:
            exchange.record(outcome)

    async def _owned_answer(self, plan: AnswerPlan, answer: UpstreamAnswer) -> tuple[bytes | None, Headers]:
        """A JSON answer as ownership lets it go: its new id recorded, or a list filtered (read whole
        for that), or a deleted id's record removed; with the headers it goes out with."""
        status, headers, body, response = answer
        ownership = self.runtime.ownership
        if ownership is None:
            return body, headers
        if body is None and plan.reads_answer:
            assert response is not None
            body = await read_answer(response, MAX_READ_ANSWER_BYTES)
        result = await ownership.answer(plan, status, body)
        if result is not None and (plan.reads_answer or result is not body):
            # The body goes out whole, maybe shorter (a filtered list): its own length.
            headers = with_content_length(headers, len(result))
        return result, headers


def own_cycle(
    direct: Callable[[], DirectSource | None] | None, *, receive: Receive | None = None, send: Send | None = None
) -> DirectSource | None:
    """The server's cycle of this request, to read its body or write its answer in one call, when
    the `receive` or `send` in hand is the cycle's own: nothing between the server and here wraps
    it (with an `Origin`, CORS wraps `send` to put its headers on the head: `cors.py`)."""
    cycle = direct() if direct is not None else None
    if cycle is None or (receive is not None and receive != cycle.receive) or (send is not None and send != cycle.send):
        return None
    return cycle


def with_content_length(headers: Headers, length: int) -> Headers:
    """`headers` (lower-cased) with one `content-length` of `length`, where the first one was (the
    others dropped), or last when there was none."""
    value = b"%d" % length
    result: Headers = []
    placed = False
    for name, item in headers:
        if name == b"content-length":
            if not placed:
                result.append((name, value))
                placed = True
            continue
        result.append((name, item))
    if not placed:
        result.append((b"content-length", value))
    return result


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    await send_error(send, NotFound())


def request_target_bytes(scope: Scope) -> int:
    """The length of the request target as the client sent it: raw path, `?` and query."""
    path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    query: bytes = scope.get("query_string", b"")
    return len(path) + (1 + len(query) if query else 0)


async def refuse_scope(scope: Scope, receive: Receive, send: Send) -> None:
    """Anything but HTTP (uvicorn runs with WebSockets off, so this is a second line): a WebSocket
    handshake is closed before acceptance, which the server answers with 403; other kinds get nothing."""
    if scope["type"] == "websocket":
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": 1008})


class Gateway:
    """The ASGI application: CORS where it applies, then the ChatKit endpoint by exact path, the
    upload prefix, and the router (the other routes, the lifespan, and a JSON 404)."""

    def __init__(self, runtime: Runtime, router: Router, chatkit: ASGIApp, uploads: ASGIApp) -> None:
        self.runtime = runtime
        self.forward_auth_any = ForwardAuthEndpoint(runtime, any_method=True)
        self.router = router
        self.chatkit = chatkit
        self.chatkit_path = runtime.config.server.chatkit_path
        self.uploads = uploads
        self.uploads_path = runtime.config.server.uploads_path
        self.max_header_bytes = runtime.config.server.max_header_bytes
        # Preflights are answered before authentication; only listed origins get an allow.
        self.entry: ASGIApp = CrossOrigin(self.dispatch, runtime.config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.router(scope, receive, send)
            else:
                await refuse_scope(scope, receive, send)
            return
        if request_target_bytes(scope) > MAX_REQUEST_TARGET_BYTES:
            await send_error(send, URITooLong())
            return
        # httptools sets no bound on header size (a 1 MB header block is accepted), so the
        # gateway sets its own before any header is read for meaning.
        if sum(map(len, chain.from_iterable(scope["headers"]))) > self.max_header_bytes:
            await send_error(send, HeadersTooLarge())
            return
        try:
            if scope["path"] == self.chatkit_path and not has_origin(scope["headers"]):
                # The ChatKit endpoint without a CORS answer to give: called straight, which also
                # keeps two coroutine frames less for as long as a stream lasts.
                await self.chatkit(scope, receive, send)
            else:
                await self.entry(scope, receive, send)
        except Exception:
            # The routes answer every error they expect; anything else is a bug, and still gets
            # a JSON 500 rather than uvicorn's plain-text one. The log line passes the credential
            # redaction (logs.py) like every other.
            logger.exception("unhandled error")
            with contextlib.suppress(RuntimeError):  # the response may have started already
                await send_error(send, GatewayError(), request_id_from(scope["headers"]))

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == self.chatkit_path:
                await self.chatkit(scope, receive, send)
                return
            if path.startswith(self.uploads_path):
                await self.uploads(scope, receive, send)
                return
            if path.startswith("/auth/verify/"):
                await self.forward_auth_any(scope, receive, send)
                return
        await self.router(scope, receive, send)


def create_app(
    config: GatewayConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    jwks_transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock = SYSTEM_CLOCK,
    span_exporter: SpanExporter | None = None,
) -> Gateway:
    """Build the gateway. `transport` replaces the network to the backend (and `jwks_transport` to
    the identity providers); `clock` replaces time; `span_exporter` receives the spans when
    `tracing.enabled` (instead of OTLP)."""
    runtime = Runtime(
        config, clock=clock, transport=transport, jwks_transport=jwks_transport, span_exporter=span_exporter
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        try:
            await runtime.start()
            logger.info("gateway started: upstream %s, ready=%s", config.upstream.url, runtime.ready)
            yield
        finally:
            await runtime.aclose()

    routes: list[BaseRoute] = [
        Route("/auth/verify", ForwardAuthEndpoint(runtime)),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz_endpoint(runtime), methods=["GET"]),
        Route("/chatkit-gateway.js", browser_helper_endpoint(), methods=["GET", "HEAD"]),
        Route("/metrics", metrics_endpoint(runtime), methods=["GET"]),
        Route("/admin/revocations", AdminEndpoint(runtime)),
        Route("/auth/backchannel-logout", BackchannelLogoutEndpoint(runtime)),
    ]
    jwks, discovery = well_known_documents(
        config.tokens.issuer, runtime.tokens.published if runtime.tokens is not None else None
    )
    routes += [Route(JWKS_PATH, jwks), Route(DISCOVERY_PATH, discovery)]
    router = Router(routes, redirect_slashes=False, default=not_found, lifespan=lifespan)
    return Gateway(runtime, router, ChatKitEndpoint(runtime), UploadEndpoint(runtime))
