"""Answers for the platform around the gateway: liveness (`/healthz`), readiness (`/readyz`),
metrics (`/metrics`) and the browser helper (`/chatkit-gateway.js`). Forward-auth is
`forward_auth.py`."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .runtime import Runtime

__all__ = ["browser_helper_endpoint", "healthz", "metrics_endpoint", "readyz_endpoint"]

BROWSER_HELPER = Path(__file__).with_name("static") / "chatkit-gateway.js"


def _json(status: int, payload: dict[str, object]) -> Response:
    return JSONResponse(payload, status_code=status, headers={"cache-control": "no-store"})


async def healthz(request: Request) -> Response:
    return _json(200, {"status": "ok"})


def readyz_endpoint(runtime: Runtime) -> Callable[[Request], Awaitable[Response]]:
    async def readyz(request: Request) -> Response:
        issuers = [
            {
                "issuer": status.issuer,
                "ready": status.ready,
                "keys": status.key_count,
                "stale": status.stale,
                "last_success_age_seconds": status.last_success_age,
                "last_error": status.last_error,
            }
            for status in runtime.authenticator.status()
        ]
        if runtime.draining:
            state, reason = "draining", "the gateway is shutting down"
        elif not runtime.started:
            state, reason = "starting", "the gateway is starting"
        elif runtime.upstream.tls_error is not None:
            state, reason = "not_ready", f"the upstream's TLS handshake fails: {runtime.upstream.tls_error}"
        elif not runtime.ready:
            state, reason = (
                "not_ready",
                "keys are not loaded (or past max_stale) for: "
                + ", ".join(str(i["issuer"]) for i in issuers if not i["ready"]),
            )
        elif runtime.ownership is not None and (problem := await runtime.ownership.owners.problem()):
            state, reason = "not_ready", problem
        elif runtime.revocations is not None and not runtime.revocations.store.available:
            # Requests fail closed (503 `revocation_unavailable`) until it answers again.
            state, reason = "not_ready", "the revocation store (redis) cannot be reached"
        else:
            state, reason = "ready", None
        body: dict[str, object] = {"status": state, "issuers": issuers}
        if reason:
            body["reason"] = reason
        return _json(200 if state == "ready" else 503, body)

    return readyz


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
    """`GET /metrics`: the Prometheus text format of this gateway's metrics (all its workers')."""

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(runtime.observer.exposition), media_type=CONTENT_TYPE_LATEST)

    return metrics
