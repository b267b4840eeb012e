"""Learning a new thread's owner from the first events of a stream, without buffering the stream.

A ChatKit stream that creates a thread opens with `thread.created` (openai-chatkit sends it first).
The watch sees the stream's chunks before they are relayed, until it has seen `thread.created`
or, failing that, its first few events: a chunk goes on at once unless it ends inside one of
those events, in which case the unfinished event's bytes wait for the rest of it (a few hundred
bytes, normally in the same chunk). When an event is `thread.created`, its thread is recorded
for the user before the bytes holding it are relayed, so even a crash right after never leaves a
client holding an id whose owner is unrecorded. After that event (a stream creates one thread),
or those first events, the watch steps aside and the relay forwards chunks untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable

import orjson

from gateway.errors import GatewayError, OwnershipUnavailable

__all__ = ["SCANNED_EVENTS", "ThreadCreatedWatch"]

# openai-chatkit sends `thread.created` first; a couple more leave room for a backend that sends a
# notice or a comment first, and bound what the watch reads.
SCANNED_EVENTS = 3
# An unfinished event held back longer than this is let go, unless it may be `thread.created`,
# which would then be relayed unrecorded: the stream is refused instead.
MAX_HELD_BYTES = 256 * 1024
THREAD_CREATED = b'"thread.created"'
# An event ends at a blank line (WHATWG HTML, "Server-sent events": CRLF, LF or CR line ends).
EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
LINE_END = re.compile(rb"\r\n|\n|\r")


def _loads(payload: bytes) -> object:
    """An event's JSON, by `orjson` (several times faster than `json`), and by `json` whatever
    `orjson` refuses (NaN, a number beyond a double, a BOM, deep nesting...): an event is never
    read as less than `json` reads it. The two agree on objects and strings, all the watch reads.
    `ValueError` (or `RecursionError`) when neither reads it."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)


async def _recorded(thread_id: str) -> None:
    """What a finished watch records with: nothing (it reads no more events)."""


class ThreadCreatedWatch:
    """Feed it each chunk of an SSE stream; relay what it returns. `active` turns False once done."""

    __slots__ = ("_held", "_record", "_seen", "active")

    def __init__(self, record: Callable[[str], Awaitable[None]]) -> None:
        self._record = record
        self._held = b""
        self._seen = 0
        self.active = True

    async def feed(self, chunk: bytes) -> bytes:
        """The bytes that may be relayed now; a `GatewayError` when a new thread cannot be recorded."""
        data = self._held + chunk if self._held else chunk
        relayable = 0
        for match in EVENT_END.finditer(data):
            await self._event(data[relayable : match.start()])
            relayable = match.end()
            if self._seen >= SCANNED_EVENTS:
                self._stop()
                return data
        rest = data[relayable:]
        if len(rest) > MAX_HELD_BYTES:
            if THREAD_CREATED in rest:
                raise OwnershipUnavailable()
            self._stop()
            return data
        self._held = rest
        return data[:relayable]

    def _stop(self) -> None:
        """Done watching. The relay may keep the watch for the rest of a long stream: what it
        referred to (the recording closure, with the user's id and the policy) goes now."""
        self.active = False
        self._held = b""
        self._record = _recorded

    async def rest(self) -> bytes:
        """What is held back when the stream ends or breaks: an unfinished last event. It is
        recorded like any other (a lenient client might still read it); dropped if that fails, or
        if it may be an unreadable `thread.created`."""
        held, self._held = self._held, b""
        self.active = False
        if held:
            try:
                if not await self._event(held):
                    return b""
            except GatewayError:
                return b""
        return held

    async def _event(self, raw: bytes) -> bool:
        """Look at one event; whether it could be read (JSON, or no `thread.created` in it)."""
        data = [line[5:].removeprefix(b" ") for line in LINE_END.split(raw) if line.startswith(b"data:")]
        if not data:
            return True  # a comment or a keep-alive: not an event
        self._seen += 1
        payload = b"\n".join(data)
        if THREAD_CREATED not in payload:
            return True
        try:
            event = _loads(payload)
        except (ValueError, RecursionError):
            return False
        if not isinstance(event, dict) or event.get("type") != "thread.created":
            return True
        thread = event.get("thread")
        thread_id = thread.get("id") if isinstance(thread, dict) else None
        if isinstance(thread_id, str) and thread_id:
            await self._record(thread_id)
            # A stream creates one thread: nothing more to learn, so the stream's next chunks go
            # straight to the client (docs/performance.md).
            self._seen = SCANNED_EVENTS
        return True
