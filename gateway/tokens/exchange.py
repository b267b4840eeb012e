"""`mode = "exchange"`: the tool token comes from the IdP by OAuth 2.0 Token Exchange (RFC 8693).

The gateway, as a confidential client (HTTP Basic, RFC 6749 §2.3.1), presents the user's verified
token as `subject_token` and asks for one token for the resource (`resource` RFC 8707, `audience`
RFC 8693 §2.1, `scope`). The answer is kept per user token (by its SHA-256, never the token) until
30 s before it expires, so a tool server never gets a token in its last seconds. Any failure is
`TokenExchangeFailed` (502): a request is never forwarded without the tokens it was configured for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
from cachetools import TTLCache

from ..clock import Clock
from ..config import ConfigError, TokenResourceConfig
from ..errors import TokenExchangeFailed

__all__ = ["EXCHANGE_TIMEOUT_SECONDS", "TokenExchange", "exchange_client"]

logger = logging.getLogger("chatkit_gateway.tokens")

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
EXCHANGE_TIMEOUT_SECONDS = 10.0
# A token answer is a few KiB; a larger one is not an answer (and is not held in memory).
MAX_ANSWER_BYTES = 64 * 1024
REFRESH_BEFORE_SECONDS = 30.0
# However long the IdP says: a cached token is asked for again after this.
MAX_CACHE_SECONDS = 3600.0
# RFC 6749 §5.2: an `error` code is a short ASCII word; anything else is not repeated in the log.
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")


def exchange_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The one client for every exchange, made at start-up: no proxies or .netrc from the
    environment, no redirects (a token request is never replayed elsewhere), no cookie jar reuse."""
    return httpx.AsyncClient(
        transport=transport, trust_env=False, follow_redirects=False, timeout=EXCHANGE_TIMEOUT_SECONDS
    )


def _basic_auth(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1: both parts form-urlencoded before they are joined and encoded.
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _jwt_exp(token: str) -> float | None:
    """A JWT's `exp`, read without verification: only to know how long to keep the IdP's answer."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class TokenExchange:
    """RFC 8693 exchanges for one `[[tokens.resources]]` entry, with their cache."""

    def __init__(
        self,
        resource: TokenResourceConfig,
        clock: Clock,
        cache_size: int,
        on_result: Callable[[str, str], None] | None = None,
    ) -> None:
        assert resource.token_endpoint and resource.client_id and resource.client_secret_file
        self.name = resource.name
        self.endpoint = resource.token_endpoint
        self.clock = clock
        self._on_result = on_result or (lambda resource, result: None)
        try:
            secret = Path(resource.client_secret_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            where = f"tokens.resources.{resource.name}.client_secret_file"
            raise ConfigError(f"{where}: cannot read {resource.client_secret_file}: {exc.strerror}") from None
        self._headers = {"authorization": _basic_auth(resource.client_id, secret), "accept": "application/json"}
        self._form = {
            "grant_type": GRANT_TYPE,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": resource.audience,
            "audience": resource.audience,
        }
        if resource.scopes:
            self._form["scope"] = " ".join(resource.scopes)
        self._cache: TTLCache[bytes, tuple[str, float]] = TTLCache(
            maxsize=cache_size, ttl=MAX_CACHE_SECONDS, timer=clock.time
        )
        # One exchange at a time per user token: concurrent requests wait for the same answer.
        self._pending: dict[bytes, asyncio.Future[tuple[str, float]]] = {}

    async def token_for(self, client: httpx.AsyncClient, subject_token: str) -> str:
        """The tool token for the user whose verified token is `subject_token`, by `client`."""
        key = hashlib.sha256(subject_token.encode()).digest()
        cached = self._cache.get(key)
        if cached is not None and self.clock.time() < cached[1]:
            return cached[0]
        pending = self._pending.get(key)
        if pending is not None:
            return (await asyncio.shield(pending))[0]
        future: asyncio.Future[tuple[str, float]] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            answer = await self._exchange(client, subject_token)
            self._on_result(self.name, "ok")
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, TokenExchangeFailed) else TokenExchangeFailed())
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[key]
        future.set_result(answer)
        if answer[1] > self.clock.time():
            self._cache[key] = answer
        return answer[0]

    async def _exchange(self, client: httpx.AsyncClient, subject_token: str) -> tuple[str, float]:
        form = {**self._form, "subject_token": subject_token}
        try:
            async with client.stream("POST", self.endpoint, data=form, headers=self._headers) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        self._fail(f"HTTP {response.status_code}, answer over {MAX_ANSWER_BYTES} bytes")
                status = response.status_code
        except httpx.HTTPError as exc:
            self._fail(type(exc).__name__)
        answer = self._parse(bytes(body))
        if status != 200:
            error = answer.get("error")
            code = error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else "no error code"
            self._fail(f"HTTP {status} ({code})")
        token = answer.get("access_token")
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
            self._fail("the answer holds no usable access_token")
        return token, self._refresh_at(answer, token)

    def _refresh_at(self, answer: dict[str, Any], token: str) -> float:
        """When the cached token is asked for again: 30 s before it expires (0: not cached)."""
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            expires_at: float | None = self.clock.time() + expires_in
        else:
            expires_at = _jwt_exp(token)
        return 0.0 if expires_at is None else expires_at - REFRESH_BEFORE_SECONDS

    @staticmethod
    def _parse(body: bytes) -> dict[str, Any]:
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError):
            return {}
        return answer if isinstance(answer, dict) else {}

    def _fail(self, reason: str) -> NoReturn:
        # The reason names a status, an OAuth error code or an exception type: never a token or body.
        logger.warning("token exchange for resource %s failed: %s", self.name, reason)
        self._on_result(self.name, "failed")
        raise TokenExchangeFailed()
