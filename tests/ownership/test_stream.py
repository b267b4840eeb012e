"""The watch over a stream's first events: the thread of `thread.created` is recorded before any
byte of that event may be relayed, everything else passes at once and unchanged, and after that
event, or the first events, the watch steps aside."""

from __future__ import annotations

import json

import pytest

from gateway.errors import OwnershipUnavailable
from gateway.ownership import ThreadCreatedWatch
from gateway.ownership.stream import MAX_HELD_BYTES, SCANNED_EVENTS


def event(payload: dict[str, object], *, newline: bytes = b"\n") -> bytes:
    return b"data: " + json.dumps(payload).encode() + newline + newline


CREATED = event({"type": "thread.created", "thread": {"id": "thr_new", "title": None, "items": {"data": []}}})
ITEM = event({"type": "thread.item.done", "item": {"id": "msg_1", "content": [{"text": "hi"}]}})
DELTA = event({"type": "thread.item.updated", "item_id": "msg_2", "update": {"delta": "Echo"}})


class Recorder:
    """What the watch recorded, and what the relay had been given by then."""

    def __init__(self, *, fail: bool = False) -> None:
        self.recorded: list[str] = []
        self.relayed_before: list[bytes] = []
        self.relayed = b""
        self.fail = fail

    async def __call__(self, thread_id: str) -> None:
        if self.fail:
            raise OwnershipUnavailable()
        self.recorded.append(thread_id)
        self.relayed_before.append(self.relayed)


async def relay(watch: ThreadCreatedWatch, recorder: Recorder, chunks: list[bytes]) -> bytes:
    for chunk in chunks:
        recorder.relayed += await watch.feed(chunk) if watch.active else chunk
    recorder.relayed += await watch.rest()
    return recorder.relayed


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1, 7, 64, 10_000], ids=lambda n: f"chunks-of-{n}")
async def test_the_new_thread_is_recorded_before_any_byte_carrying_its_id_is_relayed(size: int) -> None:
    stream = CREATED + ITEM + DELTA + DELTA
    recorder = Recorder()
    relayed = await relay(ThreadCreatedWatch(recorder), recorder, split_every(stream, size))
    assert relayed == stream
    assert recorder.recorded == ["thr_new"]
    assert b"thr_new" not in recorder.relayed_before[0]


@pytest.mark.anyio
async def test_complete_events_pass_at_once_and_only_an_unfinished_one_waits() -> None:
    recorder = Recorder()
    watch = ThreadCreatedWatch(recorder)
    assert await watch.feed(ITEM + DELTA[:10]) == ITEM
    assert await watch.feed(DELTA[10:]) == DELTA[:10] + DELTA[10:]


@pytest.mark.anyio
async def test_after_the_first_events_the_watch_steps_aside() -> None:
    recorder = Recorder()
    watch = ThreadCreatedWatch(recorder)
    first = ITEM * SCANNED_EVENTS + DELTA[:5]
    assert await watch.feed(first) == first  # the unfinished event goes too: nothing more is read
    assert not watch.active
    assert recorder.recorded == []


@pytest.mark.anyio
async def test_once_the_new_thread_is_recorded_the_watch_steps_aside() -> None:
    """A stream creates one thread: after its `thread.created` the rest goes straight through,
    the unfinished event too, and a second `thread.created` is not read."""
    recorder = Recorder()
    watch = ThreadCreatedWatch(recorder)
    assert await watch.feed(ITEM) == ITEM and watch.active  # a notice first: still watching
    first = CREATED + DELTA[:5]
    assert await watch.feed(first) == first
    assert not watch.active
    assert recorder.recorded == ["thr_new"]


@pytest.mark.anyio
async def test_comments_and_keepalives_are_not_counted_as_events() -> None:
    recorder = Recorder()
    stream = b": keepalive\n\n" * (SCANNED_EVENTS + 1) + CREATED
    assert await relay(ThreadCreatedWatch(recorder), recorder, [stream]) == stream
    assert recorder.recorded == ["thr_new"]


@pytest.mark.anyio
@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["crlf", "cr"])
async def test_other_line_ends_are_understood(newline: bytes) -> None:
    recorder = Recorder()
    created = event({"type": "thread.created", "thread": {"id": "thr_cr"}}, newline=newline)
    assert await relay(ThreadCreatedWatch(recorder), recorder, split_every(created, 5)) == created
    assert recorder.recorded == ["thr_cr"]


@pytest.mark.anyio
async def test_a_message_quoting_thread_created_records_nothing() -> None:
    recorder = Recorder()
    quoted = event({"type": "thread.item.done", "item": {"text": '{"type":"thread.created","thread":{"id":"x"}}'}})
    fake_key = event({"kind": "thread.created", "thread": {"id": "thr_fake"}})
    await relay(ThreadCreatedWatch(recorder), recorder, [quoted + fake_key])
    assert recorder.recorded == []


@pytest.mark.anyio
async def test_a_failed_record_raises_before_the_event_is_relayed() -> None:
    recorder = Recorder(fail=True)
    watch = ThreadCreatedWatch(recorder)
    with pytest.raises(OwnershipUnavailable):
        await watch.feed(CREATED + ITEM)


@pytest.mark.anyio
async def test_an_unfinished_last_event_is_recorded_before_it_is_let_go() -> None:
    recorder = Recorder()
    unfinished = CREATED[:-2]
    assert await relay(ThreadCreatedWatch(recorder), recorder, [unfinished]) == unfinished
    assert recorder.recorded == ["thr_new"]
    failing = Recorder(fail=True)
    assert await relay(ThreadCreatedWatch(failing), failing, [unfinished]) == b""


@pytest.mark.anyio
async def test_a_huge_first_event_is_let_go_unless_it_may_create_a_thread() -> None:
    recorder = Recorder()
    watch = ThreadCreatedWatch(recorder)
    huge = b"data: " + b"x" * (MAX_HELD_BYTES + 1)
    assert await watch.feed(huge) == huge
    assert not watch.active

    watch = ThreadCreatedWatch(Recorder())
    with pytest.raises(OwnershipUnavailable):
        await watch.feed(b'data: {"type":"thread.created","thread":{"title":"' + b"x" * MAX_HELD_BYTES)


@pytest.mark.anyio
async def test_an_unreadable_unfinished_thread_created_is_dropped_and_any_other_let_go() -> None:
    recorder = Recorder()
    watch = ThreadCreatedWatch(recorder)
    assert await watch.feed(ITEM + b'data: {"type":"thread.created","thread":{"id":"thr_cut') == ITEM
    assert await watch.rest() == b""
    watch = ThreadCreatedWatch(recorder)
    assert await watch.feed(ITEM + b'data: {"type":"thr') == ITEM
    assert await watch.rest() == b'data: {"type":"thr'
    assert recorder.recorded == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "thread.created", "thread": {"id": "thr_nan", "score": NaN}}',
        b'{"type": "thread.created", "thread": {"id": "thr_nan", "n": 1' + b"0" * 400 + b"}}",
    ],
    ids=["nan", "number-beyond-a-double"],
)
async def test_an_event_only_json_reads_is_read_as_json_reads_it(data: bytes) -> None:
    # orjson reads the stream's events first and refuses these; `json` reads them, so the thread
    # is recorded as before, and the stream relayed whole.
    stream = b"data: " + data + b"\n\n" + ITEM
    recorder = Recorder()
    assert await relay(ThreadCreatedWatch(recorder), recorder, [stream]) == stream
    assert recorder.recorded == ["thr_nan"]


@pytest.mark.anyio
async def test_an_unfinished_thread_created_nested_beyond_what_json_reads_is_dropped() -> None:
    # Neither reader takes it (orjson's depth limit, then `json`'s recursion limit).
    data = b'{"type": "thread.created", "thread": {"id": "thr_deep"}, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    recorder = Recorder()
    assert await relay(ThreadCreatedWatch(recorder), recorder, [b"data: " + data]) == b""
    assert recorder.recorded == []
