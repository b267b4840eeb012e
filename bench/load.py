"""Stream load from a second process: raw asyncio sockets and httptools, so the client costs little.

Each event the bench upstream sends carries the `time.monotonic_ns()` of its sending; the client
subtracts it from its own reading at arrival (CLOCK_MONOTONIC is one clock for the whole machine),
which gives the per-event delivery latency through whatever sits in between.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field

import httptools
import uvloop

STAMP = re.compile(rb'"t":(\d+)')


@dataclass
class StreamStats:
    latencies_ns: list[int] = field(default_factory=list)
    sent_ns: list[int] = field(default_factory=list)  # each latency's event, when the upstream sent it
    first_event_at: list[float] = field(default_factory=list)
    events: int = 0
    failures: int = 0

    def once_all_open(self) -> list[int]:
        """The latencies of the events sent after every stream had its first event: the relay of
        open streams, without the queue a burst of openings puts in front of the first events."""
        if not self.first_event_at:
            return []
        opened_ns = int(max(self.first_event_at) * 1e9)
        return [latency for latency, sent in zip(self.latencies_ns, self.sent_ns, strict=True) if sent > opened_ns]


def _request(path: str, host: str, token: str, body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


class _Response:
    """httptools callbacks: count events in the de-chunked body and time them."""

    def __init__(self, stats: StreamStats, first: asyncio.Future[None]) -> None:
        self.stats = stats
        self.first = first
        self.tail = b""
        self.done = False
        self.status = 0

    def on_status(self, status: bytes) -> None:
        pass

    def on_body(self, body: bytes) -> None:
        now = time.monotonic_ns()
        data = self.tail + body
        frames = data.split(b"\n\n")
        self.tail = frames.pop()
        for frame in frames:
            self.stats.events += 1
            match = STAMP.search(frame)
            if match:
                sent = int(match.group(1))
                self.stats.latencies_ns.append(now - sent)
                self.stats.sent_ns.append(sent)
            if not self.first.done():
                self.first.set_result(None)
                self.stats.first_event_at.append(time.monotonic())

    def on_message_complete(self) -> None:
        self.done = True


async def one_stream(
    host: str,
    port: int,
    token: str,
    body: dict[str, object],
    stats: StreamStats,
    hold: asyncio.Event | None = None,
    gate: asyncio.Semaphore | None = None,
) -> None:
    """One streamed request; with `hold`, keep the connection open until it is set, then drop it.

    `gate` bounds the connection attempts in flight (released once connected).
    """
    first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handler = _Response(stats, first)
    parser = httptools.HttpResponseParser(handler)
    try:
        if gate is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:
            async with gate:
                reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats.failures += 1
        return
    try:
        writer.write(_request("/chatkit", f"{host}:{port}", token, body))
        while not handler.done:
            if hold is not None and first.done():
                await hold.wait()
                return
            chunk = await reader.read(65536)
            if not chunk:
                break
            parser.feed_data(chunk)
            if parser.get_status_code() != 200:
                stats.failures += 1
                return
    except (OSError, httptools.HttpParserError):
        stats.failures += 1
    finally:
        writer.close()


async def _streams(host: str, port: int, token: str, streams: int, events: int, interval_ms: float) -> StreamStats:
    stats = StreamStats()
    body = {"type": "threads.create", "params": {"events": events, "interval_ms": interval_ms}}
    await asyncio.gather(*(one_stream(host, port, token, body, stats) for _ in range(streams)))
    return stats


def run_streams(host: str, port: int, token: str, *, streams: int, events: int, interval_ms: float) -> StreamStats:
    """`streams` concurrent streams of `events` events, one every `interval_ms`."""
    return uvloop.run(_streams(host, port, token, streams, events, interval_ms))


@dataclass(frozen=True)
class StormResult:
    opened: int
    seconds_to_all_first_events: float
    failures: int


class Storm:
    """`streams` idle streams opened at once in a thread of their own; held until `release()`."""

    def __init__(self, host: str, port: int, token: str, streams: int) -> None:
        self.host, self.port, self.token, self.streams = host, port, token, streams
        self.opened = threading.Event()
        self.result: StormResult | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        uvloop.run(self._storm())

    async def _storm(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        stats = StreamStats()
        body = {"type": "threads.create", "params": {"idle": True}}
        gate = asyncio.Semaphore(512)  # connects in flight at once: the same for every target

        async def one() -> None:
            async with gate:
                connected = asyncio.ensure_future(
                    one_stream(self.host, self.port, self.token, body, stats, hold=self._release)
                )
                await asyncio.sleep(0)
            await connected

        started = time.monotonic()
        tasks = [asyncio.ensure_future(one()) for _ in range(self.streams)]
        deadline = started + 120
        while len(stats.first_event_at) + stats.failures < self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        elapsed = (max(stats.first_event_at) - started) if stats.first_event_at else float("nan")
        self.result = StormResult(len(stats.first_event_at), elapsed, stats.failures)
        self.opened.set()
        await self._release.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
