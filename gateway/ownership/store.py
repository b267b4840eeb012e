"""Where owners are recorded: one record per thread or attachment id, `id -> user id`.

A record is made once and never changed: `claim` writes it only when the id has none (SQL
`INSERT ... ON CONFLICT DO NOTHING`; in Redis a script that sets the key only if it is absent, as
`SET NX` does, and returns the owner in the same round trip) and answers the owner on record
either way, so two replicas racing for one id agree on the first. `release` removes a record, and only its
owner's. Three stores behind one protocol:

- `SQLiteStore`, the default: a local file in WAL mode, written with `synchronous = FULL` (a record
  is on disk before the answer carrying its id is relayed, so it survives a crash of the process or
  of the machine). The standard library's `sqlite3` runs on one worker thread of its own, never on
  the event loop.
- `RedisStore`: one key per id, shared by replicas.
- `MemoryStore`: a dict, for tests and the demo; gone with the process.

Every failure of a store (its library's exceptions, `OSError`, timeouts) surfaces as
`StoreUnavailable` and nothing else; the caller answers 503 (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, TypeVar

from gateway.config import OwnershipConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["MemoryStore", "OwnerStore", "RedisStore", "SQLiteStore", "StoreUnavailable", "open_store"]

REDIS_KEY_PREFIX = "chatkit-gateway:owner:"
REDIS_TIMEOUT_SECONDS = 0.5
# After a Redis failure the store is not tried again for this long: a dead or black-holed server
# then costs one timeout per second, not one per request.
RETRY_AFTER_SECONDS = 1.0
SQLITE_BUSY_TIMEOUT_MS = 2000
# Well under SQLite's default bound on bound parameters (32766 since 3.32).
SQLITE_IDS_PER_QUERY = 500
CLAIM_ATTEMPTS = 3

# Set-if-absent (never overwritten) and read back, atomically and in one round trip.
CLAIM_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return ARGV[1]
"""
# Compare-and-delete in one step: a record goes only if it still names this owner.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store cannot be reached or failed. `reason` is short (an exception's class name)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class OwnerStore(Protocol):
    """What the ownership policy needs of a store. Every method may raise `StoreUnavailable`."""

    name: str

    async def start(self) -> None:
        """Connect and prepare (schema, scripts)."""

    async def aclose(self) -> None: ...

    async def ping(self) -> None:
        """Reach the store, or raise."""

    async def owners(self, ids: Sequence[str]) -> dict[str, str]:
        """The owners on record of those of `ids` that have one."""

    async def claim(self, item_id: str, owner: str) -> str:
        """Record `owner` for `item_id` unless it has an owner already; the owner on record after."""

    async def release(self, item_id: str, owner: str) -> None:
        """Remove the record of `item_id` if `owner` holds it."""


class MemoryStore:
    name = "memory"

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def ping(self) -> None: ...

    async def owners(self, ids: Sequence[str]) -> dict[str, str]:
        return {item_id: self._owners[item_id] for item_id in ids if item_id in self._owners}

    async def claim(self, item_id: str, owner: str) -> str:
        return self._owners.setdefault(item_id, owner)

    async def release(self, item_id: str, owner: str) -> None:
        if self._owners.get(item_id) == owner:
            del self._owners[item_id]


class SQLiteStore:
    """A table `owners(id PRIMARY KEY, owner)` in a local file, used from one thread of its own."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        # One thread: the connection is used by it alone, and statements never race each other.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ownership-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def job() -> T:
            if self._db is None:
                self._db = self._connect()
            return work(self._db)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, job)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__, str(exc)) from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # WAL: readers (another gateway process on the same file) do not wait for a writer.
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before it returns (records are few: one per new thread).
            db.execute("PRAGMA synchronous = FULL")
            db.execute("CREATE TABLE IF NOT EXISTS owners (id TEXT PRIMARY KEY, owner TEXT NOT NULL) WITHOUT ROWID")
        except BaseException:
            db.close()
            raise
        return db

    async def start(self) -> None:
        await self.ping()

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        with contextlib.suppress(sqlite3.Error):
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=False)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1 FROM owners LIMIT 1").fetchall())

    async def owners(self, ids: Sequence[str]) -> dict[str, str]:
        def select(db: sqlite3.Connection) -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(ids), SQLITE_IDS_PER_QUERY):
                chunk = ids[start : start + SQLITE_IDS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                found.update(db.execute(f"SELECT id, owner FROM owners WHERE id IN ({marks})", chunk).fetchall())
            return found

        return await self._run(select) if ids else {}

    async def claim(self, item_id: str, owner: str) -> str:
        def insert(db: sqlite3.Connection) -> str:
            db.execute("INSERT INTO owners (id, owner) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (item_id, owner))
            row = db.execute("SELECT owner FROM owners WHERE id = ?", (item_id,)).fetchone()
            # Gone between the two statements (released by another process): nobody holds it now.
            return str(row[0]) if row is not None else ""

        for _ in range(CLAIM_ATTEMPTS):
            holder = await self._run(insert)
            if holder:
                return holder
        raise StoreUnavailable("ClaimRace", "the record kept disappearing")

    async def release(self, item_id: str, owner: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM owners WHERE id = ? AND owner = ?", (item_id, owner)))


class RedisStore:
    """One key per id (`chatkit-gateway:owner:<id>`), no expiry: a record lives until released."""

    name = "redis"

    def __init__(self, url: str) -> None:
        # Imported here: only this store needs redis.
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        # redis-py's default retries ten times with backoff, seconds on the request path when Redis
        # is down; one immediate retry is enough to replace a pooled connection that broke meanwhile.
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._claim = self._redis.register_script(CLAIM_SCRIPT)
        self._release = self._redis.register_script(RELEASE_SCRIPT)
        self._down_until = -math.inf
        self._last_reason = ""

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """The one place Redis exceptions become `StoreUnavailable`."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(self._last_reason, "skipped after a recent failure")
        try:
            yield
        except self._errors as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_SECONDS
            self._last_reason = type(exc).__name__
            raise StoreUnavailable(self._last_reason, str(exc)) from exc

    async def start(self) -> None:
        await self.ping()

    async def aclose(self) -> None:
        with contextlib.suppress(*self._errors):
            await self._redis.aclose()

    async def ping(self) -> None:
        with self._translate():
            await self._redis.ping()

    async def owners(self, ids: Sequence[str]) -> dict[str, str]:
        if not ids:
            return {}
        with self._translate():
            values = await self._redis.mget([REDIS_KEY_PREFIX + item_id for item_id in ids])
        return {item_id: str(value) for item_id, value in zip(ids, values, strict=True) if value is not None}

    async def claim(self, item_id: str, owner: str) -> str:
        with self._translate():
            return str(await self._claim(keys=[REDIS_KEY_PREFIX + item_id], args=[owner]))

    async def release(self, item_id: str, owner: str) -> None:
        with self._translate():
            await self._release(keys=[REDIS_KEY_PREFIX + item_id], args=[owner])


def open_store(config: OwnershipConfig) -> OwnerStore:
    """The store `config.store` names (not started)."""
    if config.store == "redis" and config.redis_url:  # the config requires the URL for redis
        return RedisStore(config.redis_url)
    if config.store == "sqlite":
        return SQLiteStore(config.sqlite_path)
    return MemoryStore()
