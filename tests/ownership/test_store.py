"""The owner stores: a record is made once and never overwritten, lookups, removal by the owner
only, persistence (SQLite file, a real `redis-server`), and failures surfacing as `StoreUnavailable`."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.config import OwnershipConfig
from gateway.ownership import Owners, OwnerStore, StoreUnavailable, open_store
from gateway.ownership.store import MemoryStore, RedisStore, SQLiteStore
from tests.support.procs import free_port

if TYPE_CHECKING:
    from tests.support.redis import RedisServer


async def started_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OwnerStore]:
    """The store `request.param` names, started, and closed after."""
    made: OwnerStore
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(str(tmp_path / "owners.sqlite3"))
    else:
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisStore(redis_server.url)
    await made.start()
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OwnerStore]:
    async for made in started_store(request, tmp_path):
        yield made


def new_id() -> str:
    # The Redis store is shared by the session: ids of their own keep tests apart.
    return f"thr_{uuid.uuid4().hex}"


@pytest.mark.anyio
async def test_the_first_claim_wins_and_is_never_overwritten(store: OwnerStore) -> None:
    thread = new_id()
    assert await store.claim(thread, "alice") == "alice"
    assert await store.claim(thread, "bob") == "alice"
    assert await store.claim(thread, "alice") == "alice"
    assert await store.owners([thread]) == {thread: "alice"}


@pytest.mark.anyio
async def test_lookups_answer_only_the_ids_on_record(store: OwnerStore) -> None:
    mine, yours, nobodys = new_id(), new_id(), new_id()
    await store.claim(mine, "alice")
    await store.claim(yours, "bob")
    assert await store.owners([mine, nobodys, yours]) == {mine: "alice", yours: "bob"}
    assert await store.owners([]) == {}


@pytest.mark.anyio
async def test_a_record_is_released_by_its_owner_only(store: OwnerStore) -> None:
    thread = new_id()
    await store.claim(thread, "alice")
    await store.release(thread, "bob")
    assert await store.owners([thread]) == {thread: "alice"}
    await store.release(thread, "alice")
    assert await store.owners([thread]) == {}
    assert await store.claim(thread, "bob") == "bob"


@pytest.mark.anyio
async def test_many_ids_are_looked_up_at_once(store: OwnerStore) -> None:
    ids = [new_id() for _ in range(1200)]  # more than one SQLite query's worth
    for item_id in ids[::3]:
        await store.claim(item_id, "alice")
    assert await store.owners(ids) == dict.fromkeys(ids[::3], "alice")


@pytest.mark.anyio
async def test_sqlite_records_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    path = str(tmp_path / "owners.sqlite3")
    first = SQLiteStore(path)
    await first.start()
    await first.claim("thr_1", "alice")
    await first.aclose()
    second = SQLiteStore(path)
    await second.start()
    try:
        assert await second.owners(["thr_1"]) == {"thr_1": "alice"}
        assert await second.claim("thr_1", "bob") == "alice"
    finally:
        await second.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.anyio
async def test_two_sqlite_stores_on_one_file_agree_on_the_first_owner(tmp_path: Path) -> None:
    path = str(tmp_path / "owners.sqlite3")
    one, two = SQLiteStore(path), SQLiteStore(path)
    await one.start()
    await two.start()
    try:
        assert await one.claim("thr_1", "alice") == "alice"
        assert await two.claim("thr_1", "bob") == "alice"
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.anyio
async def test_two_redis_stores_share_records(redis_server: RedisServer) -> None:
    one, two = RedisStore(redis_server.url), RedisStore(redis_server.url)
    thread = new_id()
    try:
        assert await one.claim(thread, "alice") == "alice"
        assert await two.claim(thread, "bob") == "alice"
        await two.release(thread, "alice")
        assert await one.owners([thread]) == {}
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.anyio
async def test_an_unreachable_redis_raises_store_unavailable_and_is_skipped_for_a_moment() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable) as first:
            await store.ping()
        assert first.value.reason == "ConnectionError"
        # Within the retry pause, a call fails at once without trying the network again.
        with pytest.raises(StoreUnavailable, match="skipped after a recent failure"):
            await store.claim("thr_1", "alice")
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_an_unusable_sqlite_path_raises_store_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "missing-folder" / "owners.sqlite3"))
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.start()
        assert raised.value.reason == "OperationalError"
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_owners_are_cached_after_the_first_lookup(tmp_path: Path) -> None:
    """A cached answer never reaches the store again: removed behind the gateway's back, the
    record is still known, because owners never change."""
    path = tmp_path / "owners.sqlite3"
    owners = Owners(SQLiteStore(str(path)), cache_size=10)
    await owners.start()
    try:
        await owners.store.claim("thr_1", "alice")
        assert await owners.owners_of(["thr_1", "thr_2"]) == {"thr_1": "alice"}
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM owners")
        assert await owners.owners_of(["thr_1"]) == {"thr_1": "alice"}
        assert owners.cached("thr_2") is None  # absent records are not cached
    finally:
        await owners.aclose()


@pytest.mark.anyio
async def test_the_cache_keeps_at_most_its_size_and_forgets_released_ids() -> None:
    store = MemoryStore()
    owners = Owners(store, cache_size=2)
    for n in range(3):
        await owners.claim(f"thr_{n}", "alice")
    assert [owners.cached(f"thr_{n}") for n in range(3)] == [None, "alice", "alice"]
    await owners.release("thr_2", "alice")
    assert owners.cached("thr_2") is None
    assert await store.owners(["thr_2"]) == {}


@pytest.mark.anyio
async def test_store_failures_are_reported_and_become_ownership_unavailable() -> None:
    from gateway.errors import OwnershipUnavailable

    reasons: list[str] = []
    owners = Owners(RedisStore(f"redis://127.0.0.1:{free_port()}/0"), cache_size=10, on_store_error=reasons.append)
    try:
        await owners.start()  # never raises: readiness reports it
        with pytest.raises(OwnershipUnavailable):
            await owners.claim("thr_1", "alice")
        with pytest.raises(OwnershipUnavailable):
            await owners.owners_of(["thr_1"])
        await owners.release("thr_1", "alice")  # best effort: reported, not raised
        assert await owners.problem() == "the ownership store (redis) cannot be reached"
        assert len(reasons) == 5
    finally:
        await owners.aclose()


@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        pytest.param({}, SQLiteStore, id="sqlite-by-default"),
        pytest.param({"store": "memory"}, MemoryStore, id="memory"),
        pytest.param({"store": "redis", "redis_url": "redis://127.0.0.1:1/0"}, RedisStore, id="redis"),
    ],
)
def test_the_configured_store_is_opened(settings: dict[str, str], kind: Callable[..., object]) -> None:
    assert isinstance(open_store(OwnershipConfig.model_validate(settings)), kind)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_sqlite_claims_made_together_share_commits_and_each_is_on_disk_when_answered(tmp_path: Path) -> None:
    """Claims asked for while a commit runs go in the next one (a few commits for hundreds of
    records), yet no claim is answered before its record can be read from the file by another
    connection; two users claiming one id in the same batch still get one owner."""
    path = str(tmp_path / "owners.sqlite3")
    store = SQLiteStore(path)
    await store.start()
    commits: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    reader = sqlite3.connect(path)
    try:

        async def claim_and_check(item_id: str, owner: str) -> str:
            holder = await store.claim(item_id, owner)
            row = reader.execute("SELECT owner FROM owners WHERE id = ?", (item_id,)).fetchone()
            assert row == (holder,)
            return holder

        ids = [new_id() for _ in range(300)]
        claims = [claim_and_check(item_id, "alice") for item_id in ids]
        claims += [claim_and_check(ids[0], "bob"), claim_and_check(ids[1], "bob")]
        holders = await asyncio.gather(*claims)
        assert holders == ["alice"] * 302
        assert 1 <= len(commits) < 30
    finally:
        reader.close()
        await store.aclose()


@pytest.mark.anyio
async def test_a_sqlite_batch_that_cannot_commit_fails_every_claim_in_it(tmp_path: Path) -> None:
    """Another process holds the write lock past the busy timeout: every claim waiting fails with
    `StoreUnavailable`, and none is on record afterwards."""
    path = str(tmp_path / "owners.sqlite3")
    store = SQLiteStore(path)
    await store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        ids = [new_id() for _ in range(5)]
        results = await asyncio.gather(*(store.claim(item_id, "alice") for item_id in ids), return_exceptions=True)
        assert all(isinstance(result, StoreUnavailable) for result in results), results
        blocker.execute("ROLLBACK")
        assert await store.owners(ids) == {}
        assert await store.claim(ids[0], "alice") == "alice"  # and the store works again
    finally:
        blocker.close()
        await store.aclose()


@pytest.mark.anyio
async def test_a_sqlite_claim_given_up_by_its_caller_leaves_the_others_and_the_store_working(tmp_path: Path) -> None:
    """A caller cancelled while its claim waits for its batch (a client gone): the claims beside it
    are answered, and the store takes the next ones."""
    store = SQLiteStore(str(tmp_path / "owners.sqlite3"))
    await store.start()
    try:
        ids = [new_id() for _ in range(50)]
        tasks = [asyncio.ensure_future(store.claim(item_id, "alice")) for item_id in ids]
        await asyncio.sleep(0)
        tasks[25].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[25], asyncio.CancelledError)
        assert [result for n, result in enumerate(results) if n != 25] == ["alice"] * 49
        assert await store.claim(new_id(), "bob") == "bob"
        assert set(await store.owners(ids)) >= set(ids[:25] + ids[26:])
    finally:
        await store.aclose()


class CountedPings:
    """A real store whose pings are counted (each still goes to the store); while `held` is
    clear, a ping waits for it before it goes."""

    def __init__(self, store: OwnerStore) -> None:
        self.count = 0
        self.held = asyncio.Event()
        self.held.set()
        self._ping = store.ping
        store.ping = self  # type: ignore[method-assign]

    async def __call__(self) -> None:
        self.count += 1
        await self.held.wait()
        await self._ping()


@pytest.fixture(params=["sqlite", "redis"])
async def remote_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OwnerStore]:
    """The stores a ping waits for (the memory store answers without a pause)."""
    async for made in started_store(request, tmp_path):
        yield made


@pytest.mark.anyio
async def test_creations_that_come_together_share_one_ping(remote_store: OwnerStore) -> None:
    owners = Owners(remote_store, cache_size=10)
    pings = CountedPings(remote_store)
    await asyncio.gather(*(owners.reach() for _ in range(50)))
    assert pings.count == 1
    # One after the other, each asks the store itself.
    await owners.reach()
    await owners.reach()
    assert pings.count == 3


@pytest.mark.anyio
async def test_when_the_caller_whose_ping_it_is_gives_up_the_others_still_get_an_answer(
    remote_store: OwnerStore,
) -> None:
    owners = Owners(remote_store, cache_size=10)
    pings = CountedPings(remote_store)
    pings.held.clear()
    first = asyncio.ensure_future(owners.reach())
    await asyncio.sleep(0)  # its ping is on its way
    others = [asyncio.ensure_future(owners.reach()) for _ in range(20)]
    await asyncio.sleep(0)  # they share it
    first.cancel()
    for _ in range(10):  # a few turns of the loop: the cancellation, then the others wake
        await asyncio.sleep(0)
    assert first.cancelled() and not any(other.done() for other in others) and pings.count == 2
    pings.held.set()
    await asyncio.gather(*others)  # answered by the ping one of them asked for again
    assert pings.count == 2


@pytest.mark.anyio
async def test_a_shared_ping_that_fails_fails_everyone_sharing_it() -> None:
    from gateway.errors import OwnershipUnavailable

    reasons: list[str] = []
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    owners = Owners(store, cache_size=10, on_store_error=reasons.append)
    pings = CountedPings(store)
    try:
        answers = await asyncio.gather(*(owners.reach() for _ in range(10)), return_exceptions=True)
        assert all(isinstance(answer, OwnershipUnavailable) for answer in answers), answers
        assert pings.count == 1 and reasons == ["ConnectionError"] * 10
    finally:
        await store.aclose()
