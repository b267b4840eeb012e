"""Per-user rate limits: requests per minute, messages per minute, concurrent streams
(docs/operations.md, "Per-user limits").

Every request takes one token from its user's request bucket; a streaming (message-producing)
request takes one from the message bucket as well. A bucket holds as many tokens as its per-minute
figure (the burst) and refills at figure/60 per second. Every bucket a request needs must hold a
token or none is touched: a rejected request consumes nothing and gets `RateLimited` (429) with
`Retry-After` in whole seconds, the wait until each of those buckets holds a token again. Open
streams are counted per user while they last. A figure of 0 means no limit.

Backends:

- `memory`: per process, right for one replica. A bucket that has refilled completely is the same
  as no bucket, so such buckets are pruned as the table grows and memory stays bounded.
- `redis`: replicas share one budget. Each check is one Lua script, atomic on the server and timed
  by the server's `TIME`, so replicas with skewed clocks agree; a key expires when its bucket would
  be full again, so idle users cost nothing. An open stream is a member of its user's sorted set,
  scored by the end of its lease; one task per limiter renews the leases of its open streams, so
  the streams of a crashed replica free themselves when their leases run out.

When Redis cannot be reached or fails, `ratelimit.on_backend_error` decides: "allow" admits,
"deny" answers 429 with `Retry-After: 1`. Every occurrence goes to the `on_backend_error` callback
(for a metric) and is logged as a warning at most every few seconds. No Redis exception escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import RateLimitConfig
from gateway.errors import RateLimited

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["STREAM_LEASE_SECONDS", "RateLimiter", "StreamSlot"]

logger = logging.getLogger("chatkit_gateway.ratelimit")

STREAM_LEASE_SECONDS = 120.0
KEY_PREFIX = "chatkit-gateway:rl:"
REDIS_TIMEOUT_SECONDS = 0.5
# After a failure Redis is skipped this long: a dead or black-holed server then costs one timeout
# per second, not one per request.
BACKEND_RETRY_SECONDS = 1.0
WARNING_INTERVAL_SECONDS = 5.0
PRUNE_MIN_ENTRIES = 1024

Buckets = tuple[tuple[str, int], ...]  # (bucket name, per-minute figure)
Release = Callable[[], Awaitable[None]]

# The server's clock in milliseconds, so replicas whose clocks disagree still share one budget.
SERVER_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the user's buckets; ARGV: their per-minute figures. Returns 0 when one token was taken from
# each, else the milliseconds until every one of them holds a token (then nothing is taken).
TAKE_SCRIPT = (
    SERVER_NOW
    + """
local levels, wait = {}, 0
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local level = cap
  if state[1] then
    level = math.min(cap, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * cap / 60000)
  end
  levels[i] = level
  if level < 1 then wait = math.max(wait, math.ceil((1 - level) * 60000 / cap)) end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[i])
  redis.call('HSET', key, 'tokens', tostring(levels[i] - 1), 'at', now)
  redis.call('PEXPIRE', key, math.ceil((cap - levels[i] + 1) * 60000 / cap))
end
return 0
"""
)

# KEYS[1]: the user's open streams; ARGV: limit, slot id, lease ms. Returns 1 when the slot was added.
ACQUIRE_SCRIPT = (
    SERVER_NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
)

# KEYS[1]: the user's open streams; ARGV: slot id, lease ms. XX: a slot closed meanwhile stays closed.
RENEW_SCRIPT = (
    SERVER_NOW
    + """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
"""
)


class StreamSlot:
    """One counted open stream. `close()` frees it (idempotent); call it in `finally` when the stream ends."""

    __slots__ = ("_release",)

    def __init__(self, release: Release | None = None) -> None:
        self._release = release

    async def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await release()


class _BackendError(Exception):
    """The shared store failed; `reason` is short and of few values (the exception's class name)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _FailureReport:
    """Passes every backend failure to the callback, and logs at most one warning every few seconds."""

    def __init__(self, clock: Clock, callback: Callable[[str], None] | None) -> None:
        self._clock = clock
        self._callback = callback
        self._next_warning = -math.inf

    def __call__(self, error: _BackendError, during: str) -> None:
        if self._callback is not None:
            self._callback(error.reason)
        now = self._clock.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + WARNING_INTERVAL_SECONDS
            logger.warning("rate-limit backend failed during %s, on_backend_error applies: %s", during, error)


class _Backend(Protocol):
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...

    async def take(self, user_id: str, buckets: Buckets) -> float:
        """Take a token from each bucket and return 0, or take none and return the seconds to wait."""

    async def acquire(self, user_id: str, limit: int) -> Release | None:
        """Count one more open stream and return its release, or None when `limit` are open."""


class _MemoryBackend:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float, float]] = {}  # -> tokens, at, full again at
        self._prune_at = PRUNE_MIN_ENTRIES
        self._streams: dict[str, int] = {}

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...

    async def take(self, user_id: str, buckets: Buckets) -> float:
        now = self._clock.monotonic()
        levels: list[float] = []
        wait = 0.0
        for name, per_minute in buckets:
            tokens, at, _ = self._buckets.get((name, user_id), (per_minute, now, now))
            level = min(per_minute, tokens + (now - at) * per_minute / 60)
            levels.append(level)
            if level < 1:
                wait = max(wait, (1 - level) * 60 / per_minute)
        if wait > 0:
            return wait
        for (name, per_minute), level in zip(buckets, levels, strict=True):
            self._buckets[name, user_id] = (level - 1, now, now + (per_minute - level + 1) * 60 / per_minute)
        if len(self._buckets) >= self._prune_at:
            # Doubling the threshold keeps pruning amortized O(1) per request however many users are active.
            self._buckets = {key: state for key, state in self._buckets.items() if state[2] > now}
            self._prune_at = max(PRUNE_MIN_ENTRIES, 2 * len(self._buckets))
        return 0.0

    async def acquire(self, user_id: str, limit: int) -> Release | None:
        if self._streams.get(user_id, 0) >= limit:
            return None
        self._streams[user_id] = self._streams.get(user_id, 0) + 1

        async def release() -> None:
            left = self._streams[user_id] - 1
            if left:
                self._streams[user_id] = left
            else:
                del self._streams[user_id]

        return release


class _RedisBackend:
    def __init__(self, url: str, *, lease_seconds: float, clock: Clock, report: _FailureReport) -> None:
        # Imported here: redis is an optional dependency (`chatkit-gateway[redis]`), needed by this backend only.
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        # redis-py's default retries ten times with backoff, seconds on the request path when Redis is
        # down; one immediate retry is enough to replace a pooled connection that broke meanwhile.
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1),
        )
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._take = self._redis.register_script(TAKE_SCRIPT)
        self._acquire = self._redis.register_script(ACQUIRE_SCRIPT)
        self._renew = self._redis.register_script(RENEW_SCRIPT)
        self._lease_ms = math.ceil(lease_seconds * 1000)
        self._clock = clock
        self._report = report
        self._down_until = -math.inf
        self._last_reason = ""
        self._open: dict[str, str] = {}  # slot id -> key, the slots whose leases this replica renews
        self._renewer: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """The one place Redis exceptions become `_BackendError`."""
        if self._clock.monotonic() < self._down_until:
            raise _BackendError(self._last_reason, "skipped after a recent failure")
        try:
            yield
        except self._errors as exc:
            self._down_until = self._clock.monotonic() + BACKEND_RETRY_SECONDS
            self._last_reason = type(exc).__name__
            raise _BackendError(self._last_reason, str(exc) or "no detail") from exc

    async def start(self) -> None:
        with self._translate():
            await self._redis.ping()
            for script in (self._take, self._acquire, self._renew):
                script.sha = await self._redis.script_load(script.script)

    async def aclose(self) -> None:
        # Open slots are left to their leases, as a crash would leave them.
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with contextlib.suppress(*self._errors):
            await self._redis.aclose()

    async def take(self, user_id: str, buckets: Buckets) -> float:
        # `{user}` is a Redis Cluster hash tag: a user's keys share a slot, as one script needs.
        keys = [f"{KEY_PREFIX}{{{user_id}}}:{name}" for name, _ in buckets]
        with self._translate():
            wait_ms = await self._take(keys=keys, args=[per_minute for _, per_minute in buckets])
        return int(wait_ms) / 1000

    async def acquire(self, user_id: str, limit: int) -> Release | None:
        key = f"{KEY_PREFIX}{{{user_id}}}:streams"
        slot_id = secrets.token_hex(8)
        with self._translate():
            if not await self._acquire(keys=[key], args=[limit, slot_id, self._lease_ms]):
                return None
        self._open[slot_id] = key
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever(), name="ratelimit-lease-renewer")

        async def release() -> None:
            self._open.pop(slot_id, None)
            try:
                with self._translate():
                    await self._redis.zrem(key, slot_id)
            except _BackendError as error:
                self._report(error, "stream close")  # the lease frees the slot instead

        return release

    async def _renew_forever(self) -> None:
        # One task renews every open slot of this replica, so an open stream costs no task of its own.
        while True:
            await asyncio.sleep(self._lease_ms / 4000)
            if not self._open:
                continue
            try:
                with self._translate():
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for slot_id, key in list(self._open.items()):
                            await self._renew(keys=[key], args=[slot_id, self._lease_ms], client=pipe)
                        await pipe.execute()
            except _BackendError as error:
                self._report(error, "lease renewal")


def _whole_seconds(wait: float) -> str:
    # The epsilon keeps float noise from turning an exact 30 s into 31.
    return str(max(1, math.ceil(wait - 1e-9)))


class RateLimiter:
    """Per-user limits: made once in the app's lifespan (`create`, then `start`) and closed there (`aclose`)."""

    def __init__(self, config: RateLimitConfig, backend: _Backend, report: _FailureReport) -> None:
        requests: Buckets = (("req", config.requests_per_minute),) if config.requests_per_minute else ()
        messages: Buckets = (("msg", config.messages_per_minute),) if config.messages_per_minute else ()
        self._request_buckets = requests
        self._message_buckets = requests + messages
        self._max_streams = config.max_concurrent_streams
        self._deny_on_error = config.on_backend_error == "deny"
        self._backend = backend
        self._report = report

    @classmethod
    def create(
        cls,
        config: RateLimitConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_backend_error: Callable[[str], None] | None = None,
        stream_lease_seconds: float = STREAM_LEASE_SECONDS,
    ) -> RateLimiter:
        """The limiter for `config.backend`; `on_backend_error(reason)` is called on every Redis failure."""
        report = _FailureReport(clock, on_backend_error)
        backend: _Backend
        if config.backend == "redis" and config.redis_url:  # the config requires the URL for redis
            backend = _RedisBackend(config.redis_url, lease_seconds=stream_lease_seconds, clock=clock, report=report)
        else:
            backend = _MemoryBackend(clock)
        return cls(config, backend, report)

    async def start(self) -> None:
        """Connect and load the scripts. Never raises: an unreachable Redis is reported and retried later."""
        try:
            await self._backend.start()
        except _BackendError as error:
            self._report(error, "start")

    async def aclose(self) -> None:
        await self._backend.aclose()

    async def admit(self, user_id: str, *, message: bool) -> None:
        """Count one request of `user_id` (also a message when `message`), or raise `RateLimited`."""
        buckets = self._message_buckets if message else self._request_buckets
        if not buckets:
            return
        try:
            wait = await self._backend.take(user_id, buckets)
        except _BackendError as error:
            self._backend_failed(error, "admit")
            return
        if wait > 0:
            raise RateLimited(headers={"Retry-After": _whole_seconds(wait)})

    async def open_stream(self, user_id: str) -> StreamSlot:
        """Count one more open stream of `user_id`, or raise `RateLimited` when the cap is reached."""
        if not self._max_streams:
            return StreamSlot()
        try:
            release = await self._backend.acquire(user_id, self._max_streams)
        except _BackendError as error:
            self._backend_failed(error, "stream open")
            return StreamSlot()  # allowed, but uncounted: there is nothing to release
        if release is None:
            # When a stream ends is unknown; a short Retry-After lets the client try again soon.
            raise RateLimited("Too many open streams. Try again when one ends.", headers={"Retry-After": "1"})
        return StreamSlot(release)

    def _backend_failed(self, error: _BackendError, during: str) -> None:
        self._report(error, during)
        if self._deny_on_error:
            raise RateLimited(headers={"Retry-After": "1"}) from None
