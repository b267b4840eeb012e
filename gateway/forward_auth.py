"""`/auth/verify`: forward-auth, the contract ingress controllers speak (ingress-nginx
`auth-url`, Traefik ForwardAuth, Caddy `forward_auth`, Envoy `ext_authz` in HTTP mode).

A 2xx with identity headers lets the original request through, 401/403 stops it. The verification
is the ChatKit endpoint's, cookie origin rule included (docs/deployment.md).
"""

from __future__ import annotations

import json

from starlette.types import Receive, Scope, Send

from .endpoint import Endpoint
from .errors import MethodNotAllowed
from .headers import Headers
from .identity import header_bytes_of
from .observe import Exchange
from .responses import JSON_HEADERS
from .runtime import Runtime

__all__ = ["ForwardAuthEndpoint"]


class ForwardAuthEndpoint(Endpoint):
    """`GET`/`POST /auth/verify`: 200 with the identity headers, or the 401/403 JSON error.

    With `any_method`, for `/auth/verify/<original path>`: Envoy's HTTP `ext_authz` appends the
    original path to the service's and keeps the original method.
    """

    route = "auth_verify"
    op = "verify"

    def __init__(self, runtime: Runtime, *, any_method: bool = False) -> None:
        super().__init__(runtime.observer)
        self.runtime = runtime
        self.any_method = any_method

    async def handle(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        if not self.any_method and scope["method"] not in ("GET", "POST", "HEAD"):
            raise MethodNotAllowed(headers={"Allow": "GET, POST"})
        principal, identity = await self.runtime.authenticate(scope["headers"])
        exchange.status, exchange.user_id, exchange.source = 200, identity.user_id, principal.source
        user = header_bytes_of(identity.user_id)
        answer: Headers = [*JSON_HEADERS, (b"x-request-id", exchange.request_id.encode()), (b"x-user-id", user)]
        answer.append((b"x-auth-request-user", user))
        if identity.email is not None:
            email = header_bytes_of(identity.email)
            answer.extend([(b"x-user-email", email), (b"x-auth-request-email", email)])
        body = json.dumps({"userId": identity.user_id, "source": principal.source}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": answer})
        await send({"type": "http.response.body", "body": body})
