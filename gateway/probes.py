"""Answers for the platform around the gateway: liveness, readiness, and forward-auth.

`/auth/verify` is the contract ingress controllers speak (ingress-nginx `auth-url`, Traefik
ForwardAuth, Caddy `forward_auth`, Envoy `ext_authz` in HTTP mode): 2xx with identity headers lets
the original request through, 401/403 stops it. The verification is the ChatKit endpoint's, cookie
origin rule included.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .errors import GatewayError, MethodNotAllowed
from .headers import Headers, request_id_from
from .identity import header_value_of
from .observe import Exchange
from .responses import JSON_HEADERS, send_error
from .runtime import Runtime

__all__ = ["ForwardAuthEndpoint", "browser_helper_endpoint", "healthz", "metrics_endpoint", "readyz_endpoint"]

BROWSER_HELPER = Path(__file__).with_name("static") / "chatkit-gateway.js"


def _json(status: int, payload: dict[str, object]) -> Response:
    return JSONResponse(payload, status_code=status, headers={"cache-control": "no-store"})


async def healthz(request: Request) -> Response:
    return _json(200, {"status": "ok"})


def readyz_endpoint(runtime: Runtime) -> Callable[[Request], Awaitable[Response]]:
    async def readyz(request: Request) -> Response:
        issuers = []
        if runtime.authenticator is not None:
            for status in runtime.authenticator.status():
                issuers.append(
                    {
                        "issuer": status.issuer,
                        "ready": status.ready,
                        "keys": status.key_count,
                        "stale": status.stale,
                        "last_success_age_seconds": status.last_success_age,
                        "last_error": status.last_error,
                    }
                )
        if runtime.draining:
            state, reason = "draining", "the gateway is shutting down"
        elif not runtime.started:
            state, reason = "starting", "the gateway is starting"
        elif not runtime.ready:
            state, reason = (
                "not_ready",
                "keys are not loaded (or past max_stale) for: "
                + ", ".join(str(i["issuer"]) for i in issuers if not i["ready"]),
            )
        elif runtime.ownership is not None and (problem := await runtime.ownership.owners.problem()):
            state, reason = "not_ready", problem
        else:
            state, reason = "ready", None
        body: dict[str, object] = {"status": state, "issuers": issuers}
        if reason:
            body["reason"] = reason
        return _json(200 if state == "ready" else 503, body)

    return readyz


class ForwardAuthEndpoint:
    """`GET`/`POST /auth/verify`: 200 with the identity headers, or the 401/403 JSON error.

    With `any_method`, for `/auth/verify/<original path>`: Envoy's HTTP `ext_authz` appends the
    original path to the service's and keeps the original method.
    """

    def __init__(self, runtime: Runtime, *, any_method: bool = False) -> None:
        self.runtime = runtime
        self.any_method = any_method

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = scope["headers"]
        exchange = Exchange(request_id_from(headers), "auth_verify", time.monotonic(), scope["method"], op="verify")
        try:
            await self._answer(scope, send, headers, exchange)
        finally:
            self.runtime.observer.finish(exchange)

    async def _answer(self, scope: Scope, send: Send, headers: Headers, exchange: Exchange) -> None:
        request_id = exchange.request_id
        try:
            if not self.any_method and scope["method"] not in ("GET", "POST", "HEAD"):
                raise MethodNotAllowed(headers={"Allow": "GET, POST"})
            principal, identity = await self.runtime.authenticate(headers)
        except GatewayError as error:
            exchange.status, exchange.error = error.status, error.code
            await send_error(send, error, request_id)
            return
        exchange.status, exchange.user_id, exchange.source = 200, identity.user_id, principal.source
        user = header_value_of(identity.user_id)
        answer: Headers = [*JSON_HEADERS, (b"x-request-id", request_id.encode()), (b"x-user-id", user)]
        answer.append((b"x-auth-request-user", user))
        if identity.email is not None:
            email = header_value_of(identity.email)
            answer.extend([(b"x-user-email", email), (b"x-auth-request-email", email)])
        body = json.dumps({"userId": identity.user_id, "source": principal.source}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": answer})
        await send({"type": "http.response.body", "body": body})


def browser_helper_endpoint() -> Callable[[Request], Awaitable[Response]]:
    """`GET /chatkit-gateway.js`: the ES module for the browser, read once at start-up."""
    script = BROWSER_HELPER.read_bytes()
    etag = '"' + hashlib.sha256(script).hexdigest()[:32] + '"'
    headers = {"cache-control": "public, max-age=300", "etag": etag, "x-content-type-options": "nosniff"}

    async def browser_helper(request: Request) -> Response:
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(script, media_type="text/javascript; charset=utf-8", headers=headers)

    return browser_helper


def metrics_endpoint(runtime: Runtime) -> Callable[[Request], Awaitable[Response]]:
    """`GET /metrics`: the Prometheus text format of this gateway's own registry."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(runtime.observer.registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
