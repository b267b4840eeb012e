"""Timers shared by many streams: one event-loop timer per 0.1 s slot, not one per stream.

An open stream keeps two timers for as long as it lasts: the bound on its backend's silence
(`upstream.stream_idle_timeout`, `cycle.py`) and the end of its session (`exp` plus
`auth.stream_grace_seconds`, `revocation/streams.py`). On uvloop a loop timer is a handle and a
libuv timer, ~600 bytes each, so with thousands of streams open they were a tenth of what a stream
held (docs/performance.md, "Many streams"). Here a timer is a small entry in the set of its slot,
and the slot's one loop timer runs every entry still in it: never early, at most `RESOLUTION` late.
That is far finer than the bounds these timers keep (seconds to minutes; `exp` itself counts whole
seconds, RFC 7519 2).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["RESOLUTION", "SharedTimers", "Timer", "shared_timers"]

RESOLUTION = 0.1  # seconds: how late a shared timer may run


class Timer:
    """One callback at a slot's time; `cancel()` takes it out of its slot."""

    __slots__ = ("_args", "_callback", "_slot")

    def __init__(self, slot: set[Timer], callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._slot: set[Timer] | None = slot
        self._callback: Callable[..., object] | None = callback
        self._args = args

    def cancel(self) -> None:
        if self._slot is not None:
            self._slot.discard(self)
            self._slot = None
        self._callback, self._args = None, ()

    def _run(self) -> None:
        callback, args = self._callback, self._args
        self._slot, self._callback, self._args = None, None, ()
        if callback is not None:
            callback(*args)


class SharedTimers:
    """The slots of one event loop."""

    __slots__ = ("_loop", "_slots", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, set[Timer]] = {}

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Timer:
        """`callback(*args)` at loop time `when`, or up to `RESOLUTION` later."""
        number = math.ceil(when / RESOLUTION)
        slot = self._slots.get(number)
        if slot is None:
            slot = self._slots[number] = set()
            self._loop.call_at(number * RESOLUTION, self._fire, number)
        timer = Timer(slot, callback, args)
        slot.add(timer)
        return timer

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        return self.call_at(self._loop.time() + delay, callback, *args)

    def _fire(self, number: int) -> None:
        # A copy: a callback may cancel another timer of this slot (which then does not run).
        for timer in list(self._slots.pop(number, ())):
            timer._run()


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SharedTimers] = weakref.WeakKeyDictionary()


_last: SharedTimers | None = None  # the last loop's: a process runs one loop


def shared_timers(loop: asyncio.AbstractEventLoop) -> SharedTimers:
    """The shared timers of `loop` (made on first use). Asked for by every upstream connection
    and every stream: the last loop's are at hand without a weak-keyed lookup."""
    global _last
    last = _last
    if last is not None and last._loop is loop:
        return last
    timers = _BY_LOOP.get(loop)
    if timers is None:
        timers = _BY_LOOP[loop] = SharedTimers(loop)
    _last = timers
    return timers
