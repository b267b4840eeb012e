"""The per-issuer JWKS cache against a real identity provider on loopback (SPEC 3 and 10)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.auth.jwks import JWKSCache
from gateway.config import IssuerConfig, JWKSConfig
from gateway.errors import UnknownKey

if TYPE_CHECKING:
    # Imported for annotations only: the plugin import below must be the module's first.
    from tests.support.idp import LoopbackIdP, Mode

pytest_plugins = ["tests.support.idp"]
pytestmark = pytest.mark.anyio

UNKNOWN = "no-such-kid"


class SteppedClock:
    """Real time plus an offset the test moves forward, for intervals too long to sleep through."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def jwks_settings(**overrides: float) -> JWKSConfig:
    values: dict[str, float] = {
        "min_ttl_seconds": 60.0,
        "max_ttl_seconds": 3600.0,
        "default_ttl_seconds": 300.0,
        "refresh_cooldown_seconds": 30.0,
        "max_stale_seconds": 3600.0,
        "fetch_timeout_seconds": 1.0,
    }
    values.update(overrides)
    return JWKSConfig(**values, max_bytes=64 * 1024)


def issuer_of(idp: LoopbackIdP, *, discovery: bool = False, issuer: str | None = None) -> IssuerConfig:
    return IssuerConfig(
        issuer=issuer or idp.issuer,
        jwks_url=None if discovery else idp.jwks_url,
        audiences=("chatkit",),
        algorithms=("RS256", "ES256"),
    )


@asynccontextmanager
async def started_cache(
    issuer: IssuerConfig, settings: JWKSConfig | None = None, **kwargs: Any
) -> AsyncIterator[JWKSCache]:
    kwargs.setdefault("retry_initial_seconds", 0.05)
    kwargs.setdefault("retry_max_seconds", 0.2)
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
        cache = JWKSCache(issuer, settings or jwks_settings(), client, **kwargs)
        await cache.start()
        try:
            yield cache
        finally:
            await cache.aclose()


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# -- start-up and discovery -------------------------------------------------------------------


async def test_startup_fetch_loads_keys_and_reports_ready(idp: LoopbackIdP) -> None:
    results: list[tuple[str, str]] = []
    async with started_cache(issuer_of(idp), on_fetch=lambda issuer, result: results.append((issuer, result))) as cache:
        status = cache.status()
        assert status.ready and not status.stale
        assert (status.key_count, status.fetches, status.failures, status.last_error) == (2, 1, 0, None)
        assert status.issuer == idp.issuer
        assert status.last_success_age is not None and status.last_success_age < 1
        key = await cache.get_key(idp.current_kid)
        assert key is not None and key.kid == idp.current_kid
        assert idp.jwks_fetches == 1
    assert results == [(idp.issuer, "ok")]


async def test_rsa_and_ec_keys_of_one_set_are_both_served(idp: LoopbackIdP) -> None:
    async with started_cache(issuer_of(idp)) as cache:
        rsa_key = await cache.get_key(idp.kid_of("RSA"))
        ec_key = await cache.get_key(idp.kid_of("EC"))
    assert rsa_key is not None and rsa_key.kty == "RSA"
    assert ec_key is not None and (ec_key.kty, ec_key.crv) == ("EC", "P-256")


async def test_unusable_keys_are_skipped_and_a_repeated_kid_keeps_the_first(
    idp: LoopbackIdP, caplog: pytest.LogCaptureFixture
) -> None:
    rsa_kid = idp.kid_of("RSA")
    impostor = {**idp.key(idp.kid_of("EC")).public_jwk(), "kid": rsa_kid}
    idp.extra_keys = [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}, "not an object", impostor]
    with caplog.at_level(logging.INFO, logger="chatkit_gateway.jwks"):
        async with started_cache(issuer_of(idp)) as cache:
            assert cache.status().key_count == 2
            assert await cache.get_key("hmac") is None
            key = await cache.get_key(rsa_kid)
    assert key is not None and key.kty == "RSA"
    assert any(r.levelno == logging.WARNING and "repeats kid" in r.getMessage() for r in caplog.records)
    assert "c2VjcmV0" not in caplog.text


async def test_discovery_finds_the_jwks_uri_and_pins_it(idp: LoopbackIdP) -> None:
    settings = jwks_settings(refresh_cooldown_seconds=0.0)
    async with started_cache(issuer_of(idp, discovery=True), settings) as cache:
        assert cache.status().ready
        new_kid = idp.rotate()
        assert await cache.get_key(new_kid) is not None
    assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 2)


async def test_issuer_with_trailing_slash_discovers_without_a_double_slash(idp: LoopbackIdP) -> None:
    idp.discovery_issuer = idp.issuer + "/"
    async with started_cache(issuer_of(idp, discovery=True, issuer=idp.issuer + "/")) as cache:
        assert cache.status().ready
    assert idp.discovery_fetches == 1


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("discovery_issuer", "http://127.0.0.1:1", "another issuer"),
        ("discovery_issuer", "{issuer}/", "another issuer"),
        ("discovery_jwks_uri", "file:///etc/passwd", "no http(s) jwks_uri"),
        ("discovery_jwks_uri", "jwks.json", "no http(s) jwks_uri"),
    ],
    ids=["other-issuer", "issuer-with-extra-slash", "file-jwks-uri", "relative-jwks-uri"],
)
async def test_a_discovery_document_that_does_not_fit_is_rejected(
    idp: LoopbackIdP, field: str, value: str, reason: str
) -> None:
    setattr(idp, field, value.format(issuer=idp.issuer))
    async with started_cache(issuer_of(idp, discovery=True)) as cache:
        status = cache.status()
        assert not status.ready and status.key_count == 0
        assert status.last_error is not None and reason in status.last_error
    assert idp.jwks_fetches == 0


async def test_idp_refusing_at_startup_does_not_raise_and_becomes_ready_when_it_returns(idp: LoopbackIdP) -> None:
    idp.stop()
    async with started_cache(issuer_of(idp)) as cache:
        status = cache.status()
        assert not status.ready and status.failures == 1 and status.last_error is not None
        assert await cache.get_key(idp.current_kid) is None
        idp.start()
        await eventually(lambda: cache.status().ready)
        assert await cache.get_key(idp.current_kid) is not None


# -- unknown kid: cooldown and single flight ----------------------------------------------------


async def test_burst_of_requests_for_a_rotated_in_kid_shares_one_fetch(idp: LoopbackIdP) -> None:
    clock = SteppedClock()
    async with started_cache(issuer_of(idp), clock=clock) as cache:
        new_kid = idp.rotate()
        clock.advance(31)
        keys = await asyncio.gather(*(cache.get_key(new_kid) for _ in range(50)))
        assert all(key is not None and key.kid == new_kid for key in keys)
        assert idp.jwks_fetches == 2
        assert cache.status().fetches == 2


async def test_burst_of_requests_for_an_unknown_kid_shares_one_fetch(idp: LoopbackIdP) -> None:
    clock = SteppedClock()
    async with started_cache(issuer_of(idp), clock=clock) as cache:
        clock.advance(31)
        assert await asyncio.gather(*(cache.get_key(UNKNOWN) for _ in range(50))) == [None] * 50
        assert idp.jwks_fetches == 2


async def test_unknown_kid_during_the_startup_cooldown_returns_none_without_a_fetch(idp: LoopbackIdP) -> None:
    clock = SteppedClock()
    async with started_cache(issuer_of(idp), clock=clock) as cache:
        new_kid = idp.rotate()
        clock.advance(29)
        assert await cache.get_key(new_kid) is None
        assert await cache.get_key(UNKNOWN) is None
        assert idp.jwks_fetches == 1
        clock.advance(2)
        assert await cache.get_key(new_kid) is not None
        assert idp.jwks_fetches == 2
        # The refetch started a new cooldown.
        assert await cache.get_key(UNKNOWN) is None
        assert idp.jwks_fetches == 2


async def test_rotated_in_key_is_found_after_the_cooldown_without_restart(idp: LoopbackIdP) -> None:
    old_kid = idp.current_kid
    async with started_cache(issuer_of(idp), jwks_settings(refresh_cooldown_seconds=0.3)) as cache:
        new_kid = idp.rotate()
        assert await cache.get_key(new_kid) is None
        await asyncio.sleep(0.35)
        key = await cache.get_key(new_kid)
        assert key is not None and key.kid == new_kid
        # The retired key left with the set it came from.
        await asyncio.sleep(0.35)
        assert await cache.get_key(old_kid) is None
    assert idp.jwks_fetches == 3


async def test_the_cooldown_also_starts_at_a_background_refresh(idp: LoopbackIdP) -> None:
    clock = SteppedClock()
    idp.cache_control = "no-store"  # min_ttl: the first background refresh comes ~0.15 s later
    settings = jwks_settings(min_ttl_seconds=0.3, refresh_cooldown_seconds=10.0)
    async with started_cache(issuer_of(idp), settings, clock=clock) as cache:
        idp.cache_control = "max-age=3600"  # no further background refresh during the test
        clock.advance(11)  # the start-up fetch's cooldown is over
        await eventually(lambda: idp.jwks_fetches == 2)
        new_kid = idp.rotate()
        assert await cache.get_key(new_kid) is None
        assert idp.jwks_fetches == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_fetch(idp: LoopbackIdP) -> None:
    settings = jwks_settings(refresh_cooldown_seconds=0.0, fetch_timeout_seconds=5.0)
    async with started_cache(issuer_of(idp), settings) as cache:
        new_kid = idp.rotate()
        idp.mode = "hang"
        impatient = asyncio.create_task(cache.get_key(new_kid))
        patient = asyncio.create_task(cache.get_key(new_kid))
        await eventually(lambda: idp.jwks_fetches == 2)
        impatient.cancel()
        idp.mode = "ok"
        key = await patient
        assert key is not None and key.kid == new_kid
        assert impatient.cancelled()
    assert idp.jwks_fetches == 2


# -- TTL and background refresh ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [
        (None, 300.0),
        ("public, max-age=900", 900.0),
        ('max-age="1200"', 1200.0),
        ("max-age=5", 60.0),
        ("max-age=999999", 3600.0),
        ("no-store", 60.0),
        ("max-age=900, no-cache", 60.0),
        ("max-age=soon", 300.0),
    ],
    ids=["absent-default", "honoured", "quoted", "clamped-to-min", "clamped-to-max", "no-store", "no-cache", "invalid"],
)
async def test_cache_control_max_age_sets_the_ttl_within_bounds(
    idp: LoopbackIdP, cache_control: str | None, ttl: float
) -> None:
    idp.cache_control = cache_control
    async with started_cache(issuer_of(idp)) as cache:
        assert cache.ttl == ttl


async def test_keys_are_refreshed_in_the_background_before_they_expire(idp: LoopbackIdP) -> None:
    idp.cache_control = "max-age=1"
    settings = jwks_settings(min_ttl_seconds=0.5, max_ttl_seconds=1.0)
    async with started_cache(issuer_of(idp), settings) as cache:
        started = idp.jwks_fetch_times[0]
        new_kid = idp.rotate()
        await eventually(lambda: idp.jwks_fetches >= 2, timeout=2)
        assert idp.jwks_fetch_times[1] - started < 0.9
        key = await cache.get_key(new_kid)
        assert key is not None and cache.status().fetches == 2


async def test_aclose_stops_the_background_refresh(idp: LoopbackIdP) -> None:
    idp.cache_control = "no-store"
    async with started_cache(issuer_of(idp), jwks_settings(min_ttl_seconds=0.2)) as cache:
        await eventually(lambda: idp.jwks_fetches >= 2)
    fetches = idp.jwks_fetches
    await asyncio.sleep(0.4)
    assert idp.jwks_fetches == fetches
    assert cache.status().fetches == fetches


# -- failures: the previous keys keep serving --------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("down", "HTTP 500"),
        ("garbage", "not valid JSON"),
        ("empty", "no usable key"),
        ("huge", "larger than 65536 bytes"),
    ],
    ids=["server-error", "not-json", "no-keys", "oversized"],
)
async def test_a_failed_refetch_keeps_the_previous_keys(
    idp: LoopbackIdP, caplog: pytest.LogCaptureFixture, mode: Mode, reason: str
) -> None:
    clock = SteppedClock()
    results: list[str] = []
    old_kid = idp.current_kid
    async with started_cache(issuer_of(idp), clock=clock, on_fetch=lambda _, result: results.append(result)) as cache:
        new_kid = idp.rotate()
        idp.mode = mode
        clock.advance(31)
        started = time.monotonic()
        assert await cache.get_key(new_kid) is None
        assert time.monotonic() - started < 0.9
        status = cache.status()
        assert status.ready and status.key_count == 2 and status.failures >= 1
        assert status.last_error is not None and reason in status.last_error
        assert await cache.get_key(old_kid) is not None
    assert results[:2] == ["ok", "error"]
    assert any(reason in r.getMessage() for r in caplog.records if r.name == "chatkit_gateway.jwks")


async def test_a_hanging_idp_is_bounded_by_the_fetch_timeout(idp: LoopbackIdP) -> None:
    settings = jwks_settings(refresh_cooldown_seconds=0.0, fetch_timeout_seconds=0.3)
    old_kid = idp.current_kid
    async with started_cache(issuer_of(idp), settings, retry_initial_seconds=5.0) as cache:
        new_kid = idp.rotate()
        idp.mode = "hang"
        started = time.monotonic()
        assert await cache.get_key(new_kid) is None
        assert 0.25 < time.monotonic() - started < 0.8
        status = cache.status()
        assert status.ready and status.last_error == "timed out after 0.3 s"
        assert await cache.get_key(old_kid) is not None


async def test_a_hanging_idp_at_startup_delays_start_by_at_most_the_timeout(idp: LoopbackIdP) -> None:
    idp.mode = "hang"
    started = time.monotonic()
    async with started_cache(issuer_of(idp), jwks_settings(fetch_timeout_seconds=0.3)) as cache:
        assert time.monotonic() - started < 0.8
        assert not cache.status().ready
        idp.mode = "ok"
        await eventually(lambda: cache.status().ready)


async def test_keys_outlive_their_ttl_while_the_idp_is_down(idp: LoopbackIdP) -> None:
    settings = jwks_settings(min_ttl_seconds=0.2, max_ttl_seconds=0.2)
    async with started_cache(issuer_of(idp), settings) as cache:
        idp.mode = "down"
        await asyncio.sleep(0.6)
        assert await cache.get_key(idp.current_kid) is not None
        status = cache.status()
        assert status.ready and not status.stale and status.failures >= 2
        assert status.last_error == "JWKS answered HTTP 500"


async def test_keys_past_max_stale_fail_closed_then_recover_without_restart(idp: LoopbackIdP) -> None:
    settings = jwks_settings(min_ttl_seconds=0.2, max_ttl_seconds=0.2, max_stale_seconds=0.5)
    async with started_cache(issuer_of(idp), settings) as cache:
        kid = idp.current_kid
        idp.mode = "down"
        await asyncio.sleep(0.7)
        with pytest.raises(UnknownKey):
            await cache.get_key(kid)
        status = cache.status()
        assert status.stale and not status.ready and status.key_count == 2
        idp.mode = "ok"
        await eventually(lambda: cache.status().ready)
        assert await cache.get_key(kid) is not None
        assert cache.status().last_error is None


async def test_max_stale_counts_from_the_last_success_not_from_the_failure(idp: LoopbackIdP) -> None:
    clock = SteppedClock()
    settings = jwks_settings(max_stale_seconds=7200.0)
    async with started_cache(issuer_of(idp), settings, clock=clock) as cache:
        idp.mode = "down"
        clock.advance(7000)
        assert await cache.get_key(UNKNOWN) is None  # a failed refetch does not restart the clock
        clock.advance(201)
        with pytest.raises(UnknownKey):
            await cache.get_key(idp.current_kid)
