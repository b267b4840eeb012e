"""Where owners are recorded: one record per thread or attachment id, `id -> user id`.

A record is made once and never changed: `claim` writes it only when the id has none (SQL
`INSERT ... ON CONFLICT DO NOTHING`; in Redis a script that sets the key only if it is absent, as
`SET NX` does, and returns the owner in the same round trip) and answers the owner on record
either way, so two replicas racing for one id agree on the first. `release` removes a record, and only its
owner's. Three stores behind one protocol:

- `SQLiteStore`, the default: a local file in WAL mode, written with `synchronous = FULL` (a record
  is on disk before the answer carrying its id is relayed, so it survives a crash of the process or
  of the machine). The standard library's `sqlite3` runs on one worker thread of its own, never on
  the event loop, in batches: the records asked for while one commit runs share the next.
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
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

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
    """A table `owners(id PRIMARY KEY, owner)` in a local file, used from one thread of its own.

    Statements go to that thread in batches: what the event loop asks for while a batch runs waits
    and goes as the next batch, in the order asked. A batch that writes is one transaction, one
    commit (so one sync to disk for all its records), and no statement's answer is given before
    that commit has returned: a claim still answers only once its record is on disk. Thousands of
    streams creating threads at once cost a few hundred commits, not one each (a synced commit took
    0.3 ms here, and they queue on the one thread: docs/performance.md, "Many streams"). When a
    batch fails, each of its statements fails (`StoreUnavailable`): nothing of it was committed."""

    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        # One thread: the connection is used by it alone, and statements never race each other.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ownership-sqlite")
        self._db: sqlite3.Connection | None = None
        self._pending: list[_Statement] = []
        self._busy = False  # a batch is with the thread

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, writes: bool = False) -> T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Statement(work, writes, done))
        if not self._busy:
            self._submit(loop)
        try:
            # A caller that gives up cancels `done` only: its statement stays in its batch.
            return await done
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__, str(exc)) from exc

    def _submit(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        try:
            self._executor.submit(self._execute, loop, batch)
        except RuntimeError as exc:  # the store is closed
            _settle(batch, [sqlite3.OperationalError(str(exc))] * len(batch))
            return
        self._busy = True

    def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Statement]) -> None:
        """On the store's thread: the batch's statements, in one transaction if any writes."""
        try:
            outcomes = self._outcomes(batch)
        except Exception as exc:  # not SQLite's: the callers get it, and the next batch still goes
            outcomes = [exc] * len(batch)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(self._finished, loop, batch, outcomes)

    def _outcomes(self, batch: list[_Statement]) -> list[object]:
        try:
            if self._db is None:
                self._db = self._connect()
            db = self._db
            transaction = len(batch) > 1 and any(statement.writes for statement in batch)
            if not transaction:
                # Reads (each its own snapshot), or one statement in autocommit.
                outcomes: list[object] = []
                for statement in batch:
                    try:
                        outcomes.append(statement.work(db))
                    except Exception as exc:
                        outcomes.append(exc)
                return outcomes
            # IMMEDIATE: the write lock is taken (waiting up to busy_timeout for another process)
            # before anything is read, so the batch never has to be retried for a stale snapshot.
            db.execute("BEGIN IMMEDIATE")
            try:
                outcomes = [statement.work(db) for statement in batch]
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                raise
            return outcomes
        except (sqlite3.Error, OSError) as exc:
            return [exc] * len(batch)

    def _finished(self, loop: asyncio.AbstractEventLoop, batch: list[_Statement], outcomes: list[object]) -> None:
        self._busy = False
        _settle(batch, outcomes)
        if self._pending:
            self._submit(loop)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # WAL: readers (another gateway process on the same file) do not wait for a writer.
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before it returns.
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

        # After any batch with the thread (one thread: jobs run in order).
        with contextlib.suppress(sqlite3.Error, RuntimeError):
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
            holder = await self._run(insert, writes=True)
            if holder:
                return holder
        raise StoreUnavailable("ClaimRace", "the record kept disappearing")

    async def release(self, item_id: str, owner: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM owners WHERE id = ? AND owner = ?", (item_id, owner)), writes=True
        )


class _Statement(NamedTuple):
    """One statement for the store's thread, and the future its answer goes to."""

    work: Callable[[sqlite3.Connection], Any]
    writes: bool
    done: asyncio.Future[Any]


def _settle(batch: list[_Statement], outcomes: list[object]) -> None:
    """On the event loop: each statement's answer, or its error, to its future."""
    for statement, outcome in zip(batch, outcomes, strict=True):
        if statement.done.done():
            continue
        if isinstance(outcome, BaseException):
            statement.done.set_exception(outcome)
        else:
            statement.done.set_result(outcome)


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
