"""The one origin the demo's browser talks to: the demo page, sign-in, and the gateway behind them.

`/`, `/demo/*`, `/signin` and `/signout` are the demo's; every other path (and the lifespan) goes
to the gateway app exactly as `create_app(config)` built it, so `/chatkit`, `/chatkit-gateway.js`,
`/healthz`, `/readyz` and `/auth/verify` behave as in production.
"""

from __future__ import annotations

import html
from pathlib import Path
from string import Template

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .idp import COOKIE_NAME, DevIdentityProvider

__all__ = ["DemoFront", "create_page_app"]

STATIC = Path(__file__).with_name("static")
ASSETS = {"demo.js": "text/javascript", "demo.css": "text/css"}
DEMO_PATHS = frozenset({"/", "/signin", "/signout"})
DEMO_PREFIX = "/demo/"
# The page loads only its own scripts and styles and posts forms only to itself.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def render_page(template: Template, claims: dict[str, object] | None) -> str:
    """The page, signed in (who, and a sign-out button) or signed out (the sign-in form)."""
    signed_in = claims is not None
    claims = claims or {}
    email = claims.get("email")
    return template.substitute(
        signed_in_hidden="" if signed_in else "hidden",
        signed_out_hidden="hidden" if signed_in else "",
        user_name=html.escape(str(claims.get("name", ""))),
        user_id=html.escape(str(claims.get("sub", ""))),
        user_email=html.escape(f" ({email})") if isinstance(email, str) else "",
    )


def create_page_app(idp: DevIdentityProvider) -> Starlette:
    template = Template((STATIC / "index.html").read_text(encoding="utf-8"))

    async def page(request: Request) -> Response:
        claims = idp.claims_of(request.cookies.get(COOKIE_NAME))
        return HTMLResponse(render_page(template, claims), headers=PAGE_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})

    return Starlette(
        routes=[
            Route("/", page, methods=["GET", "HEAD"]),
            Route(DEMO_PREFIX + "{name}", asset, methods=["GET", "HEAD"]),
            Route("/signin", idp.signin, methods=["POST"]),
            Route("/signout", idp.signout, methods=["POST"]),
        ]
    )


class DemoFront:
    """Pure ASGI, so the gateway's streams pass as they would without the demo in front."""

    def __init__(self, page_app: ASGIApp, gateway_app: ASGIApp) -> None:
        self.page_app = page_app
        self.gateway_app = gateway_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The lifespan is the gateway's: it loads the issuer's keys and opens the upstream pool.
        if scope["type"] == "http" and (scope["path"] in DEMO_PATHS or scope["path"].startswith(DEMO_PREFIX)):
            await self.page_app(scope, receive, send)
        else:
            await self.gateway_app(scope, receive, send)
