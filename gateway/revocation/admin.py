"""`POST`/`DELETE /admin/revocations`: operators add and lift revocations.

Authenticated by a bearer secret read once from `revocation.admin_token_file` and compared in
constant time. With revocation off or no admin token file the route answers 404, as if absent.
The body names `iss` with `sub`, `iss` with `sid`, and/or `jti` (each named one is an entry),
with an optional `ttl_seconds` (default 86400). Both methods answer 204; lifting an entry that
does not exist is not an error.
"""

from __future__ import annotations

import hmac
import json
import math
from pathlib import Path
from typing import Any

from starlette.types import Receive, Scope, Send

from ..body import read_body
from ..config import ConfigError, RevocationConfig
from ..endpoint import Endpoint
from ..errors import AuthError, InvalidRevocation, MethodNotAllowed, NotFound
from ..headers import Headers, header_value
from ..observe import Exchange
from ..runtime import Runtime
from .entries import Key
from .revocations import DEFAULT_TTL_SECONDS

__all__ = ["AdminEndpoint", "parse_revocation", "read_admin_token"]

MAX_BODY_BYTES = 16 * 1024
BODY_TIMEOUT_SECONDS = 10.0
MAX_TTL_SECONDS = 10 * 365 * 86400.0
MIN_ADMIN_TOKEN_BYTES = 16
FIELDS = frozenset({"iss", "sub", "sid", "jti", "ttl_seconds"})
NO_CONTENT_HEADERS: Headers = [(b"cache-control", b"no-store")]


def read_admin_token(config: RevocationConfig) -> bytes | None:
    """The admin secret, once at start-up; None leaves the admin API off."""
    if not config.enabled or config.admin_token_file is None:
        return None
    try:
        token = Path(config.admin_token_file).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"revocation.admin_token_file: cannot read {config.admin_token_file}: {exc.strerror}"
        ) from None
    if len(token) < MIN_ADMIN_TOKEN_BYTES:
        raise ConfigError(f"revocation.admin_token_file: the token must be at least {MIN_ADMIN_TOKEN_BYTES} bytes")
    return token


def parse_revocation(body: bytes) -> tuple[list[Key], float]:
    """The entries a body names and their lifetime; `InvalidRevocation` for anything else."""
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRevocation("The body is not valid JSON.") from None
    if not isinstance(data, dict) or not data.keys() <= FIELDS:
        raise InvalidRevocation()
    names = {field: data[field] for field in ("iss", "sub", "sid", "jti") if field in data}
    if not all(isinstance(value, str) and value for value in names.values()):
        raise InvalidRevocation("iss, sub, sid and jti must be non-empty strings.")
    iss = names.get("iss")
    keys: list[Key] = []
    for kind in ("sub", "sid"):
        if kind in names:
            if iss is None:
                raise InvalidRevocation(f"{kind} needs the iss it belongs to.")
            keys.append((kind, iss, names[kind]))
    if "jti" in names:
        keys.append(("jti", names["jti"]))
    if not keys:
        raise InvalidRevocation()
    ttl = data.get("ttl_seconds", DEFAULT_TTL_SECONDS)
    if type(ttl) not in (int, float) or not math.isfinite(ttl) or not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidRevocation(f"ttl_seconds must be a number of seconds above 0, at most {MAX_TTL_SECONDS:g}.")
    return keys, float(ttl)


class AdminEndpoint(Endpoint):
    """The admin route: 404 when off, else 405, 401, 400, 503 or 204."""

    route = "admin_revocations"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime.observer)
        self.runtime = runtime
        self.token = read_admin_token(runtime.config.revocation)

    async def handle(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        revocations = self.runtime.revocations
        if self.token is None or revocations is None:
            raise NotFound()
        method = scope["method"]
        if method not in ("POST", "DELETE"):
            raise MethodNotAllowed(headers={"Allow": "POST, DELETE"})
        headers: Headers = scope["headers"]
        self._authorize(headers)
        keys, ttl = parse_revocation(await read_body(receive, headers, MAX_BODY_BYTES, BODY_TIMEOUT_SECONDS))
        if method == "POST":
            await revocations.revoke(keys, ttl, source="admin")
        else:
            await revocations.lift(keys)
        exchange.status = 204
        await send({"type": "http.response.start", "status": 204, "headers": NO_CONTENT_HEADERS})
        await send({"type": "http.response.body", "body": b""})

    def _authorize(self, headers: Headers) -> None:
        assert self.token is not None
        value = header_value(headers, b"authorization") or b""
        scheme, _, given = value.partition(b" ")
        # Constant time: the comparison does not reveal how much of a guess was right.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            raise AuthError(
                "A valid admin token is required.", headers={"WWW-Authenticate": 'Bearer realm="chatkit-gateway-admin"'}
            )
