"""Shared timers (`gateway/timers.py`): one loop timer per 0.1 s slot runs every timer of the slot,
none before its time, in any order within the slot; a cancelled timer does not run, even when
another timer of its slot cancels it while the slot runs."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from gateway.timers import RESOLUTION, shared_timers


class CountingLoop(asyncio.SelectorEventLoop):
    """A real asyncio loop that counts the timers it is asked for."""

    scheduled = 0

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> asyncio.TimerHandle:
        self.scheduled += 1
        return super().call_at(when, callback, *args, context=context)


def run(coroutine: Any) -> Any:
    loop = CountingLoop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def test_timers_run_not_before_their_time_and_share_a_loop_timer_per_slot() -> None:
    async def scenario() -> tuple[list[tuple[int, float, float]], int, int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        timers = shared_timers(loop)
        assert shared_timers(loop) is timers
        ran: list[tuple[int, float, float]] = []
        done = asyncio.Event()
        start = loop.time()
        before = loop.scheduled
        for n in range(1_000):  # all within one or two slots
            when = start + 0.3 + n * 1e-5
            timers.call_at(when, lambda n=n, when=when: ran.append((n, when, loop.time())))
        slots_for_a_thousand = loop.scheduled - before
        timers.call_at(start + 0.6, done.set)
        await done.wait()
        return ran, slots_for_a_thousand, loop.scheduled - before

    ran, slots, all_slots = run(scenario())
    assert sorted(n for n, _, _ in ran) == list(range(1_000))
    assert all(at >= when - 0.002 for _, when, at in ran)  # the loop's clock resolution, as asyncio's own timers
    assert slots <= 2 and all_slots <= 3
    assert RESOLUTION == 0.1


def test_cancelled_timers_do_not_run_even_when_cancelled_by_a_timer_of_their_slot() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        timers = shared_timers(loop)
        ran: list[str] = []
        when = loop.time() + 0.05
        cancelled = timers.call_at(when, ran.append, "cancelled before")
        cancelled.cancel()
        victims = [timers.call_at(when, ran.append, f"victim {n}") for n in range(5)]

        def cancel_the_victims() -> None:
            ran.append("canceller")
            for victim in victims:
                victim.cancel()

        # Whichever runs first within the slot, each victim either ran before the canceller or not at all.
        timers.call_at(when, cancel_the_victims)
        later = asyncio.Event()
        timers.call_at(when + RESOLUTION, later.set)
        await later.wait()
        for victim in victims:
            victim.cancel()  # after it ran or was cancelled: nothing happens
        return ran

    ran = run(scenario())
    assert "cancelled before" not in ran
    assert ran.count("canceller") == 1
    assert all(entry.startswith("victim") for entry in ran[: ran.index("canceller")])
    assert ran[ran.index("canceller") + 1 :] == []


def test_each_loop_has_its_own_timers_whichever_asked_last() -> None:
    first, second = uvloop.new_event_loop(), asyncio.new_event_loop()
    try:
        mine = shared_timers(first)
        theirs = shared_timers(second)
        assert theirs is not mine
        # Alternating: the last loop's timers are remembered, and the other loop still gets its own.
        assert shared_timers(first) is mine and shared_timers(second) is theirs and shared_timers(first) is mine
        ran: list[str] = []
        theirs.call_later(0.01, ran.append, "second")
        second.run_until_complete(asyncio.sleep(0.2))
        first.run_until_complete(asyncio.sleep(0.2))
        assert ran == ["second"]
    finally:
        first.close()
        second.close()
