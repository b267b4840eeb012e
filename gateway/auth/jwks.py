"""One issuer's signing keys by `kid`: fetched at start-up, refreshed in the background, served
stale for a bound when the issuer fails (docs/security.md, "Keys").

- Keys come only from the issuer's `jwks_url`, or the `jwks_uri` of its OIDC discovery document
  (pinned once found). Header fields such as `jku` and `x5u` never reach this module.
- A key set lives for the response's `Cache-Control: max-age`, clamped to
  `[min_ttl_seconds, max_ttl_seconds]`, and is refreshed at about 90 % of that.
- An unknown `kid` triggers at most one refetch per `refresh_cooldown_seconds`, counted from every
  fetch; all callers waiting meanwhile share that one fetch.
- A failed fetch (status, timeout, oversized or invalid answer, no usable key) keeps the previous
  keys. They serve until `max_stale_seconds` after the last success (never less than their TTL);
  after that `get_key` fails closed until a fetch succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx

from gateway.auth.jose import PublicKey, UnusableKey, build_key
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import IssuerConfig, JWKSConfig
from gateway.errors import UnknownKey

__all__ = ["DISCOVERY_PATH", "FetchResult", "JWKSCache", "JWKSStatus"]

logger = logging.getLogger("chatkit_gateway.jwks")

FetchResult = Literal["ok", "error"]
DISCOVERY_PATH = "/.well-known/openid-configuration"
# Keeps a zero TTL (min_ttl_seconds = 0 and `no-store`) from turning the refresh into a busy loop.
MIN_REFRESH_SECONDS = 0.1
# Ask intermediate caches for a fresh copy: a rotated-in key must be visible on the refetch its
# unknown `kid` triggered (coreos/go-oidc #485).
REQUEST_HEADERS = {"Accept": "application/json", "Cache-Control": "no-cache"}


class FetchFailed(Exception):
    """A fetch that produced no key set; the message is the reason, safe to log and report."""


@dataclass(frozen=True)
class JWKSStatus:
    """One issuer's key cache as `/readyz` and the metrics see it."""

    issuer: str
    ready: bool
    key_count: int
    last_success_age: float | None
    last_error: str | None
    stale: bool
    fetches: int
    failures: int


class JWKSCache:
    """The verifier's `KeySource` for one issuer. Made, started and closed by the app's lifespan."""

    def __init__(
        self,
        issuer: IssuerConfig,
        settings: JWKSConfig,
        client: httpx.AsyncClient,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_fetch: Callable[[str, FetchResult], None] | None = None,
        retry_initial_seconds: float = 1.0,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self.issuer = issuer.issuer
        self._jwks_url = issuer.jwks_url
        self._settings = settings
        self._client = client
        self._clock = clock
        self._on_fetch = on_fetch
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._retry = retry_initial_seconds
        self._keys: dict[str, PublicKey] = {}
        self._ttl: float | None = None
        self._expires_at = float("-inf")
        self._last_success: float | None = None
        self._last_fetch: float | None = None
        self._last_error: str | None = None
        self._next_refresh = float("-inf")
        self._fetches = 0
        self._failures = 0
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self._rescheduled = asyncio.Event()

    @property
    def ttl(self) -> float | None:
        """The lifetime the current key set was given, after clamping; None before any success."""
        return self._ttl

    async def start(self) -> None:
        """Fetch the keys once (recording, never raising, a failure), then keep them fresh."""
        if self._task is not None:
            raise RuntimeError("JWKSCache.start() called twice")
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name=f"jwks-refresh {self.issuer}")

    async def aclose(self) -> None:
        tasks = [task for task in (self._task, self._inflight) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._inflight = None

    async def get_key(self, kid: str) -> PublicKey | None:
        """The key for `kid`, refetching once per cooldown for an unknown one.

        Raises `UnknownKey` when the keys are past `max_stale_seconds`: fail closed.
        """
        self._check_fresh()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._inflight is None and self._cooling_down():
            return None
        await self.refresh()
        self._check_fresh()
        return self._keys.get(kid)

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch already running; True when it loaded keys."""
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch(), name=f"jwks-fetch {self.issuer}")
        # A caller that gives up (client gone) must not cancel the fetch the others wait on.
        return await asyncio.shield(self._inflight)

    def status(self) -> JWKSStatus:
        now = self._clock.monotonic()
        stale = self._is_stale(now)
        return JWKSStatus(
            issuer=self.issuer,
            ready=bool(self._keys) and not stale,
            key_count=len(self._keys),
            last_success_age=None if self._last_success is None else now - self._last_success,
            last_error=self._last_error,
            stale=stale,
            fetches=self._fetches,
            failures=self._failures,
        )

    def _cooling_down(self) -> bool:
        cooldown = self._settings.refresh_cooldown_seconds
        return self._last_fetch is not None and self._clock.monotonic() - self._last_fetch < cooldown

    def _is_stale(self, now: float) -> bool:
        if self._last_success is None:
            return False
        return now > max(self._expires_at, self._last_success + self._settings.max_stale_seconds)

    def _check_fresh(self) -> None:
        if self._is_stale(self._clock.monotonic()):
            raise UnknownKey("The issuer's signing keys are stale.")

    async def _run(self) -> None:
        while True:
            self._rescheduled.clear()
            delay = self._next_refresh - self._clock.monotonic()
            if delay > 0:
                # Any fetch (an unknown kid's included) moves the schedule and wakes this loop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._rescheduled.wait()
                continue
            await self.refresh()

    async def _fetch(self) -> bool:
        self._fetches += 1
        self._last_fetch = self._clock.monotonic()
        timeout = self._settings.fetch_timeout_seconds
        try:
            with anyio.fail_after(timeout):
                keys, ttl = await self._load()
        except TimeoutError:
            self._record_failure(f"timed out after {timeout:g} s")
        except FetchFailed as exc:
            self._record_failure(str(exc))
        except httpx.HTTPError as exc:
            self._record_failure(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug must not end the refresh loop or keep the old keys from serving
            logger.exception("issuer %s: unexpected error while fetching keys", self.issuer)
            self._record_failure(f"unexpected {type(exc).__name__}")
        else:
            self._record_success(keys, ttl)
            return True
        finally:
            self._inflight = None
            self._rescheduled.set()
        return False

    async def _load(self) -> tuple[dict[str, PublicKey], float]:
        url = self._jwks_url or await self._discover()
        headers, body = await self._get(url, "JWKS")
        return self._parse_keys(_json_object(body, "JWKS")), self._ttl_of(headers)

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        _, body = await self._get(url, "discovery")
        document = _json_object(body, "discovery document")
        # OIDC Discovery 4.3: the document must name exactly the issuer it was fetched for.
        if document.get("issuer") != self.issuer:
            raise FetchFailed("discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _is_http_url(jwks_uri):
            raise FetchFailed("discovery document has no http(s) jwks_uri")
        self._jwks_url = jwks_uri
        logger.info("issuer %s: discovered jwks_uri %s", self.issuer, jwks_uri)
        return jwks_uri

    async def _get(self, url: str, what: str) -> tuple[httpx.Headers, bytes]:
        limit = self._settings.max_bytes
        async with self._client.stream("GET", url, headers=REQUEST_HEADERS) as response:
            if response.status_code != 200:
                raise FetchFailed(f"{what} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise FetchFailed(f"{what} is larger than {limit} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise FetchFailed(f"{what} is larger than {limit} bytes")
            return response.headers, bytes(body)

    def _parse_keys(self, document: Mapping[str, Any]) -> dict[str, PublicKey]:
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise FetchFailed("JWKS has no 'keys' list")
        keys: dict[str, PublicKey] = {}
        for entry in entries:
            try:
                if not isinstance(entry, dict):
                    raise UnusableKey("not a JSON object")
                key = build_key(entry)
            except UnusableKey as exc:
                logger.info("issuer %s: skipping an unusable JWK: %s", self.issuer, exc)
                continue
            if key.kid in keys:
                logger.warning("issuer %s: JWKS repeats kid %r; keeping the first", self.issuer, key.kid)
                continue
            keys[key.kid] = key
        if not keys:
            raise FetchFailed(f"JWKS has no usable key ({len(entries)} entries)")
        return keys

    def _ttl_of(self, headers: httpx.Headers) -> float:
        settings = self._settings
        ttl = settings.default_ttl_seconds
        for directive in ",".join(headers.get_list("cache-control")).split(","):
            name, _, value = directive.strip().lower().partition("=")
            if name in ("no-store", "no-cache"):
                return settings.min_ttl_seconds
            value = value.strip().strip('"')
            if name == "max-age" and value.isdigit():
                ttl = float(value)
        return min(max(ttl, settings.min_ttl_seconds), settings.max_ttl_seconds)

    def _record_success(self, keys: dict[str, PublicKey], ttl: float) -> None:
        now = self._clock.monotonic()
        if keys.keys() != self._keys.keys():
            logger.info("issuer %s: loaded %d keys (kids %s), ttl %g s", self.issuer, len(keys), sorted(keys), ttl)
        self._keys = keys
        self._ttl = ttl
        self._expires_at = now + ttl
        self._last_success = now
        self._last_error = None
        self._retry = self._retry_initial
        self._next_refresh = now + _refresh_delay(ttl)
        if self._on_fetch is not None:
            self._on_fetch(self.issuer, "ok")

    def _record_failure(self, reason: str) -> None:
        now = self._clock.monotonic()
        self._failures += 1
        self._last_error = reason
        self._next_refresh = now + self._retry
        kept, retry = len(self._keys), self._retry
        logger.warning(
            "issuer %s: JWKS fetch failed (%s); %d keys kept, retry in %g s", self.issuer, reason, kept, retry
        )
        self._retry = min(self._retry * 2, self._retry_max)
        if self._on_fetch is not None:
            self._on_fetch(self.issuer, "error")


def _refresh_delay(ttl: float) -> float:
    """Refresh at ~90 % of the TTL, at least 1 s before expiry when the TTL leaves room (Envoy)."""
    lead = min(max(0.1 * ttl, 1.0), 0.5 * ttl)
    return max(ttl - lead, MIN_REFRESH_SECONDS)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchFailed(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise FetchFailed(f"{what} is not a JSON object")
    return document


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False
