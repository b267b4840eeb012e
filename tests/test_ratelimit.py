"""Per-user rate limits (SPEC 7 and 10): token buckets whose burst is the per-minute figure, a
rejected request consumes nothing, `Retry-After` is whole seconds; the memory backend with a fake
clock, the redis backend against a real `redis-server` shared by two limiters ("replicas")."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import RateLimitConfig
from gateway.errors import RateLimited
from gateway.ratelimit import RateLimiter
from tests.support.clock import FakeClock
from tests.support.procs import free_port
from tests.support.redis import start_redis

if TYPE_CHECKING:
    from tests.support.redis import RedisServer


LEASE = 1.0  # seconds: short stream leases so expiry shows within a test


def memory_limiter(
    clock: FakeClock, *, requests_per_minute: int = 0, messages_per_minute: int = 0, max_concurrent_streams: int = 0
) -> RateLimiter:
    config = RateLimitConfig(
        backend="memory",
        requests_per_minute=requests_per_minute,
        messages_per_minute=messages_per_minute,
        max_concurrent_streams=max_concurrent_streams,
    )
    return RateLimiter.create(config, clock=clock)


async def admitted(limiter: RateLimiter, user: str, count: int, *, message: bool = False) -> int:
    """How many of `count` requests in a row get through."""
    passed = 0
    for _ in range(count):
        try:
            await limiter.admit(user, message=message)
            passed += 1
        except RateLimited:
            pass
    return passed


async def retry_after(limiter: RateLimiter, user: str, *, message: bool = False) -> str:
    with pytest.raises(RateLimited) as caught:
        await limiter.admit(user, message=message)
    assert caught.value.status == 429 and caught.value.code == "rate_limited"
    return caught.value.headers["Retry-After"]


# --- memory backend, fake clock ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("per_minute", [1, 5, 60], ids=["1/min", "5/min", "60/min"])
async def test_burst_equals_the_per_minute_figure(per_minute: int) -> None:
    limiter = memory_limiter(FakeClock(), requests_per_minute=per_minute)
    assert await admitted(limiter, "alice", per_minute + 5) == per_minute


@pytest.mark.anyio
async def test_bucket_refills_at_the_per_minute_figure_over_sixty() -> None:
    clock = FakeClock()
    limiter = memory_limiter(clock, requests_per_minute=60)
    assert await admitted(limiter, "alice", 60) == 60
    clock.advance(0.5)
    assert await admitted(limiter, "alice", 1) == 0
    clock.advance(0.5)
    assert await admitted(limiter, "alice", 2) == 1
    clock.advance(10)
    assert await admitted(limiter, "alice", 20) == 10
    clock.advance(3600)
    assert await admitted(limiter, "alice", 100) == 60  # never more than the burst


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("per_minute", "elapsed", "expected"),
    [(60, 0, "1"), (2, 0, "30"), (3, 0, "20"), (1, 0, "60"), (2, 10, "20"), (2, 29.5, "1"), (60, 0.999, "1")],
    ids=["60/min-empty", "2/min-empty", "3/min-empty", "1/min-empty", "2/min-after-10s", "2/min-almost", "60/min-ms"],
)
async def test_retry_after_is_whole_seconds_until_a_token(per_minute: int, elapsed: float, expected: str) -> None:
    clock = FakeClock()
    limiter = memory_limiter(clock, requests_per_minute=per_minute)
    await admitted(limiter, "alice", per_minute)
    clock.advance(elapsed)
    assert await retry_after(limiter, "alice") == expected


@pytest.mark.anyio
async def test_message_rejected_by_its_bucket_does_not_consume_a_request_token() -> None:
    clock = FakeClock()
    limiter = memory_limiter(clock, requests_per_minute=3, messages_per_minute=1)
    await limiter.admit("alice", message=True)
    for _ in range(5):
        assert await retry_after(limiter, "alice", message=True) == "60"
    assert await admitted(limiter, "alice", 5) == 2  # 3 minus the one message


@pytest.mark.anyio
async def test_request_rejected_by_its_bucket_does_not_consume_a_message_token() -> None:
    limiter = memory_limiter(FakeClock(), requests_per_minute=1, messages_per_minute=10)
    await limiter.admit("alice", message=False)
    assert await retry_after(limiter, "alice", message=True) == "60"
    assert await retry_after(limiter, "alice", message=True) == "60"


@pytest.mark.anyio
async def test_retry_after_is_the_longer_wait_of_the_buckets_a_message_needs() -> None:
    limiter = memory_limiter(FakeClock(), requests_per_minute=2, messages_per_minute=1)
    await limiter.admit("alice", message=True)
    await limiter.admit("alice", message=False)
    assert await retry_after(limiter, "alice", message=True) == "60"
    assert await retry_after(limiter, "alice", message=False) == "30"


@pytest.mark.anyio
async def test_messages_count_only_for_streaming_operations() -> None:
    limiter = memory_limiter(FakeClock(), messages_per_minute=1)
    assert await admitted(limiter, "alice", 100, message=False) == 100
    assert await admitted(limiter, "alice", 3, message=True) == 1


@pytest.mark.anyio
async def test_zero_means_unlimited() -> None:
    limiter = memory_limiter(FakeClock())
    assert await admitted(limiter, "alice", 1000, message=True) == 1000
    slots = [await limiter.open_stream("alice") for _ in range(100)]
    for slot in slots:
        await slot.close()


@pytest.mark.anyio
async def test_users_have_separate_budgets() -> None:
    limiter = memory_limiter(FakeClock(), requests_per_minute=2)
    assert await admitted(limiter, "alice", 5) == 2
    assert await admitted(limiter, "bob", 5) == 2


@pytest.mark.anyio
async def test_concurrent_stream_cap_and_closing_a_slot_frees_it() -> None:
    limiter = memory_limiter(FakeClock(), max_concurrent_streams=2)
    first = await limiter.open_stream("alice")
    await limiter.open_stream("alice")
    with pytest.raises(RateLimited) as caught:
        await limiter.open_stream("alice")
    assert caught.value.headers["Retry-After"] == "1"
    await limiter.open_stream("bob")  # a cap per user
    await first.close()
    await limiter.open_stream("alice")
    with pytest.raises(RateLimited):
        await limiter.open_stream("alice")


@pytest.mark.anyio
async def test_closing_a_slot_twice_frees_it_once() -> None:
    limiter = memory_limiter(FakeClock(), max_concurrent_streams=2)
    first = await limiter.open_stream("alice")
    await limiter.open_stream("alice")
    await first.close()
    await first.close()
    await limiter.open_stream("alice")
    with pytest.raises(RateLimited):
        await limiter.open_stream("alice")


@pytest.mark.anyio
async def test_memory_stays_bounded_as_buckets_refill() -> None:
    clock = FakeClock()
    limiter = memory_limiter(clock, requests_per_minute=60, messages_per_minute=60)
    for wave in range(5):
        for user in range(3000):
            await limiter.admit(f"user-{wave}-{user}", message=True)
        clock.advance(61)  # every bucket so far is full again, the same as no bucket
    assert len(limiter._backend._buckets) <= 2 * 2 * 3000  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(min_value=0, max_value=20), st.booleans()), max_size=80),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=10),
)
def test_admitted_in_any_window_never_exceed_burst_plus_refill(
    steps: list[tuple[float, bool]], per_minute: int, messages_per_minute: int
) -> None:
    clock = FakeClock()
    limiter = memory_limiter(clock, requests_per_minute=per_minute, messages_per_minute=messages_per_minute)

    async def run() -> tuple[list[float], list[float]]:
        requests: list[float] = []
        messages: list[float] = []
        for advance, message in steps:
            clock.advance(advance)
            try:
                await limiter.admit("alice", message=message)
            except RateLimited:
                continue
            requests.append(clock.now)
            if message:
                messages.append(clock.now)
        return requests, messages

    requests, messages = asyncio.run(run())
    for times, figure in ((requests, per_minute), (messages, messages_per_minute)):
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                assert j - i + 1 <= figure + (times[j] - start) * figure / 60 + 1e-6


# --- redis backend, real redis-server ---------------------------------------------------------


def redis_config(server: RedisServer | str, **limits: Any) -> RateLimitConfig:
    url = server if isinstance(server, str) else server.url
    return RateLimitConfig(backend="redis", redis_url=url, **limits)


@asynccontextmanager
async def running(config: RateLimitConfig, **options: Any) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter.create(config, stream_lease_seconds=LEASE, **options)
    await limiter.start()
    try:
        yield limiter
    finally:
        await limiter.aclose()


def new_user() -> str:
    return f"user-{uuid.uuid4().hex}"


@pytest.mark.anyio
async def test_redis_burst_and_retry_after(redis_server: RedisServer) -> None:
    user = new_user()
    async with running(redis_config(redis_server, requests_per_minute=3)) as limiter:
        assert await admitted(limiter, user, 3) == 3
        assert await retry_after(limiter, user) == "20"


@pytest.mark.anyio
async def test_redis_refills_over_time(redis_server: RedisServer) -> None:
    user = new_user()
    async with running(redis_config(redis_server, requests_per_minute=120)) as limiter:
        assert await admitted(limiter, user, 125) == 120
        await asyncio.sleep(0.6)  # 2 tokens a second
        assert await admitted(limiter, user, 3) == 1


@pytest.mark.anyio
async def test_redis_rejected_message_consumes_nothing(redis_server: RedisServer) -> None:
    user = new_user()
    async with running(redis_config(redis_server, requests_per_minute=3, messages_per_minute=1)) as limiter:
        await limiter.admit(user, message=True)
        assert await retry_after(limiter, user, message=True) == "60"
        assert await retry_after(limiter, user, message=True) == "60"
        assert await admitted(limiter, user, 5) == 2


@pytest.mark.anyio
async def test_redis_messages_count_only_for_streaming_operations(redis_server: RedisServer) -> None:
    user = new_user()
    async with running(redis_config(redis_server, messages_per_minute=2)) as limiter:
        assert await admitted(limiter, user, 50) == 50
        assert await admitted(limiter, user, 5, message=True) == 2
        assert await retry_after(limiter, user, message=True) == "30"


@pytest.mark.anyio
async def test_two_replicas_share_one_budget(redis_server: RedisServer) -> None:
    user = new_user()
    config = redis_config(redis_server, requests_per_minute=4, messages_per_minute=2)
    async with running(config) as first, running(config) as second:
        assert await admitted(first, user, 1, message=True) == 1
        assert await admitted(second, user, 3, message=True) == 1
        assert await admitted(first, user, 1) == 1
        assert await admitted(second, user, 1) == 1
        assert await retry_after(first, user) == "15"
        assert await admitted(second, new_user(), 4) == 4


@pytest.mark.anyio
async def test_redis_keys_expire_when_the_bucket_is_full_again(redis_server: RedisServer) -> None:
    from redis.asyncio import Redis

    user = new_user()
    async with running(redis_config(redis_server, requests_per_minute=6000)) as limiter:
        await limiter.admit(user, message=False)
    client = Redis.from_url(redis_server.url)
    try:
        ttl = await client.pttl(f"chatkit-gateway:rl:{{{user}}}:req")
        assert 0 < ttl <= 10  # one token at 100 a second
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_concurrent_streams_are_shared_across_replicas(redis_server: RedisServer) -> None:
    user = new_user()
    config = redis_config(redis_server, max_concurrent_streams=2)
    async with running(config) as first, running(config) as second:
        await first.open_stream(user)
        slot = await second.open_stream(user)
        with pytest.raises(RateLimited) as caught:
            await first.open_stream(user)
        assert caught.value.headers["Retry-After"] == "1"
        await slot.close()
        await slot.close()  # idempotent: frees one slot only
        await first.open_stream(user)
        with pytest.raises(RateLimited):
            await second.open_stream(user)


@pytest.mark.anyio
async def test_open_slots_are_renewed_while_their_replica_lives(redis_server: RedisServer) -> None:
    user = new_user()
    config = redis_config(redis_server, max_concurrent_streams=1)
    async with running(config) as first, running(config) as second:
        slot = await first.open_stream(user)
        await asyncio.sleep(LEASE * 1.6)
        with pytest.raises(RateLimited):
            await second.open_stream(user)
        await slot.close()
        await second.open_stream(user)


@pytest.mark.anyio
async def test_slots_of_a_crashed_replica_expire_after_their_lease(redis_server: RedisServer) -> None:
    user = new_user()
    config = redis_config(redis_server, max_concurrent_streams=1)
    async with running(config) as survivor:
        async with running(config) as crashing:
            await crashing.open_stream(user)  # never closed; aclose stops its renewals, like a crash
        with pytest.raises(RateLimited):
            await survivor.open_stream(user)
        await asyncio.sleep(LEASE + 0.2)
        await survivor.open_stream(user)


def recorder() -> tuple[list[str], Callable[[str], None]]:
    reasons: list[str] = []
    return reasons, reasons.append


@pytest.mark.anyio
async def test_redis_down_at_start_does_not_raise_and_the_policy_applies(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    reasons, record = recorder()
    caplog.set_level(logging.WARNING, logger="chatkit_gateway.ratelimit")
    async with running(redis_config(url, requests_per_minute=1), on_backend_error=record) as limiter:
        assert reasons == ["ConnectionError"]
        assert await admitted(limiter, new_user(), 5) == 5
    assert len(reasons) == 6
    assert len([r for r in caplog.records if r.name == "chatkit_gateway.ratelimit"]) == 1  # not one per request


@pytest.mark.anyio
async def test_redis_killed_mid_test_allows_or_denies_then_recovers_after_restart() -> None:
    user = new_user()
    with start_redis() as server:
        allow_reasons, allow_record = recorder()
        deny_reasons, deny_record = recorder()
        limits: dict[str, Any] = {"requests_per_minute": 2, "max_concurrent_streams": 1}
        allow_config = redis_config(server, on_backend_error="allow", **limits)
        deny_config = redis_config(server, on_backend_error="deny", **limits)
        async with (
            running(allow_config, on_backend_error=allow_record) as allowing,
            running(deny_config, on_backend_error=deny_record) as denying,
        ):
            assert await admitted(allowing, user, 3) == 2
            await allowing.open_stream(user)
            assert allow_reasons == deny_reasons == []

            server.stop()
            assert await admitted(allowing, user, 5) == 5
            slot = await allowing.open_stream(user)  # allowed uncounted; closing it is harmless
            await slot.close()
            assert await retry_after(denying, user) == "1"
            with pytest.raises(RateLimited):
                await denying.open_stream(new_user())
            assert allow_reasons and deny_reasons
            assert set(allow_reasons + deny_reasons) <= {"ConnectionError", "TimeoutError"}

            server.start()  # same port, empty data
            started = time.monotonic()
            while await admitted(denying, user, 1) == 0:  # each limiter skips Redis for a second after a failure
                assert time.monotonic() - started < 5, "the limiter did not recover"
                await asyncio.sleep(0.1)
            assert await admitted(allowing, user, 3) == 1  # enforced again, one budget
            assert await retry_after(denying, user) in {"29", "30"}
