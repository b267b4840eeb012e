"""Revocations shared by replicas through one Redis server.

Layout: a sorted set of entry keys (JSON arrays) scored by when they lapse (the server's clock,
ms), a hash of the `issued_before` of entries that have one, and an epoch string naming this copy
of the list. Each change is one Lua script that writes and publishes it on a channel named after
the Redis database (pub/sub channels span databases, so deployments on other databases of one
server stay apart).

Each replica follows the channel with one task: subscribe, then read the whole list, then apply
messages as they come. While that connection is down the replica's list may be missing entries,
so `available` is false and requests fail closed (503). After a reconnect the list is read again;
if the epoch changed (the server restarted without its data, or was flushed), the replica first
writes back what it enforced, so a restart never lifts a revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..errors import RevocationUnavailable
from .entries import Entry, Key, RevocationList
from .store import Change, Once

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStore"]

logger = logging.getLogger("chatkit_gateway.revocation")

PREFIX = "chatkit-gateway:revocations"
ONCE_PREFIX = "chatkit-gateway:once:"
TIMEOUT_SECONDS = 0.5
PING_SECONDS = 0.5
# No answer to a ping for this long: the subscription is treated as lost (a black-holed server).
SILENCE_SECONDS = 2.0
RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
START_WAIT_SECONDS = 2.0

SERVER_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, member in ipairs(gone) do redis.call('HDEL', KEYS[2], member) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS: set, cutoffs, and a name used once (optional). ARGV: channel, message, the name's ttl ms
# (or ''), then (member, ttl ms, issued_before or '') triples. Returns 0, changing nothing, when the
# name was used before; else 1.
ADD_SCRIPT = (
    SERVER_NOW
    + """
if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then return 0 end
for i = 4, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 1]), ARGV[i])
  if ARGV[i + 2] == '' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""
)

# KEYS: set, cutoffs. ARGV: channel, message, then members.
REMOVE_SCRIPT = """
for i = 3, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 0
"""

# KEYS: set, cutoffs, epoch. ARGV: the epoch this replica knows, a new epoch, then this replica's
# entries as triples. Returns {epoch, now ms, members with scores, cutoffs}.
SYNC_SCRIPT = (
    SERVER_NOW
    + """
local epoch = redis.call('GET', KEYS[3])
if epoch ~= ARGV[1] then
  for i = 3, #ARGV, 3 do
    local member, lapses = ARGV[i], now + tonumber(ARGV[i + 1])
    local score = redis.call('ZSCORE', KEYS[1], member)
    if not score or tonumber(score) < lapses then redis.call('ZADD', KEYS[1], lapses, member) end
    if ARGV[i + 2] == '' then
      redis.call('HDEL', KEYS[2], member)
    elseif not score or redis.call('HEXISTS', KEYS[2], member) == 1 then
      local old = tonumber(redis.call('HGET', KEYS[2], member) or ARGV[i + 2])
      redis.call('HSET', KEYS[2], member, tostring(math.max(old, tonumber(ARGV[i + 2]))))
    end
  end
  if not epoch then
    epoch = ARGV[2]
    redis.call('SET', KEYS[3], epoch)
  end
end
return {epoch, now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[2])}
"""
)


def _member(key: Key) -> str:
    return json.dumps(list(key), separators=(",", ":"))


def _key(member: Any) -> Key | None:
    try:
        return _key_of(json.loads(member))
    except (ValueError, TypeError):
        return None


def _key_of(value: Any) -> Key | None:
    if not isinstance(value, list) or not value or not all(isinstance(part, str) for part in value):
        return None
    return tuple(value)


def _cutoff(issued_before: float) -> str:
    return "" if issued_before == math.inf else repr(issued_before)


class RedisStore:
    """The list in Redis, followed by one task per replica (see the module docstring)."""

    def __init__(self, url: str, entries: RevocationList, clock: Clock) -> None:
        # Imported here: redis is an optional dependency, needed by this store only.
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        # No silent retries: a lost connection must be seen, since messages sent meanwhile are lost.
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        db = self._redis.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"{PREFIX}:db{db}"
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._add = self._redis.register_script(ADD_SCRIPT)
        self._remove = self._redis.register_script(REMOVE_SCRIPT)
        self._sync = self._redis.register_script(SYNC_SCRIPT)
        self._keys = [PREFIX, f"{PREFIX}:cutoffs"]
        self._entries = entries
        self._clock = clock
        self._epoch = ""
        self._synced = False
        self._first_sync = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self._synced

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="revocation-follower")
        # Give the first sync a moment, so the first requests do not fail closed needlessly.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_WAIT_SECONDS):
                await self._first_sync.wait()
        if not self._synced:
            logger.warning("revocation store unreachable at start-up: requests get 503 until it answers")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*self._errors):
            await self._redis.aclose()

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """The one place Redis exceptions become `RevocationUnavailable`."""
        try:
            yield
        except self._errors as exc:
            logger.warning("revocation store failed: %s", type(exc).__name__)
            raise RevocationUnavailable() from None

    async def add(self, changes: Sequence[Change], *, once: Once | None = None) -> bool:
        keys = self._keys if once is None else [*self._keys, ONCE_PREFIX + once[0]]
        once_ms: str | int = "" if once is None else max(1, math.ceil(once[1] * 1000))
        args: list[str | int] = [self.channel, _message("add", changes), once_ms]
        for key, ttl, issued_before in changes:
            args += [_member(key), math.ceil(ttl * 1000), _cutoff(issued_before)]
        with self._translate():
            if not await self._add(keys=keys, args=args):
                return False
        # Here at once, not when this replica's own message comes back.
        self._apply_add(changes)
        return True

    async def remove(self, keys: Sequence[Key]) -> None:
        message = json.dumps({"remove": [list(key) for key in keys]}, separators=(",", ":"))
        with self._translate():
            await self._remove(keys=self._keys, args=[self.channel, message, *map(_member, keys)])
        for key in keys:
            self._entries.discard(key)

    def _apply_add(self, changes: Sequence[Change]) -> None:
        now = self._clock.time()
        for key, ttl, issued_before in changes:
            self._entries.put(key, Entry(now + ttl, issued_before))

    async def _follow(self) -> None:
        retry = RETRY_MIN_SECONDS
        while True:
            was_synced = False
            try:
                await self._subscribed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a Redis error, or a bug: either way the list may be incomplete
                was_synced = self._synced
                if was_synced or retry == RETRY_MIN_SECONDS:
                    logger.warning("revocation subscription lost (%s): failing closed", type(exc).__name__)
            finally:
                self._synced = False
            retry = RETRY_MIN_SECONDS if was_synced else min(retry * 2, RETRY_MAX_SECONDS)
            await asyncio.sleep(retry)

    async def _subscribed(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            # Subscribed before the read: a change made during the read arrives after it.
            await pubsub.subscribe(self.channel)
            await self._read_all()
            self._synced = True
            self._first_sync.set()
            logger.info("revocation list loaded: %d entries", len(self._entries))
            loop = asyncio.get_running_loop()
            heard = next_ping = loop.time()
            while True:
                message = await pubsub.get_message(timeout=PING_SECONDS)
                now = loop.time()
                if message is not None:
                    heard = now
                    if message["type"] == "message":
                        self._apply(message["data"])
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + PING_SECONDS
                if now - heard > SILENCE_SECONDS:
                    raise TimeoutError("no answer from the revocation store")
        finally:
            with contextlib.suppress(*self._errors):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _read_all(self) -> None:
        mine = self._entries.snapshot()
        now = self._clock.time()
        args: list[str | int] = [self._epoch, secrets.token_hex(16)]
        for key, entry in mine.items():
            args += [_member(key), math.ceil((entry.expires_at - now) * 1000), _cutoff(entry.issued_before)]
        epoch, server_now, scored, cutoffs = await self._sync(keys=[*self._keys, f"{PREFIX}:epoch"], args=args)
        self._epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        before = dict(zip(cutoffs[::2], cutoffs[1::2], strict=True))
        entries: dict[Key, Entry] = {}
        now = self._clock.time()
        for member, score in zip(scored[::2], scored[1::2], strict=True):
            found = _key(member)
            if found is not None:
                cutoff = before.get(member)
                ttl = (float(score) - int(server_now)) / 1000
                entries[found] = Entry(now + ttl, math.inf if cutoff is None else float(cutoff))
        self._entries.replace(entries)

    def _apply(self, data: Any) -> None:
        try:
            message = json.loads(data)
            if "add" in message:
                changes: list[Change] = []
                for member, ttl, cutoff in message["add"]:
                    key = _key_of(member)
                    if key is not None:
                        changes.append((key, float(ttl), math.inf if cutoff is None else float(cutoff)))
                self._apply_add(changes)
            for member in message.get("remove", ()):
                key = _key_of(member)
                if key is not None:
                    self._entries.discard(key)
        except (ValueError, TypeError, KeyError):
            logger.warning("ignoring a malformed revocation message")


def _message(kind: str, changes: Sequence[Change]) -> str:
    items = [[list(key), ttl, None if before == math.inf else before] for key, ttl, before in changes]
    return json.dumps({kind: items}, separators=(",", ":"))
