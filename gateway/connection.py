"""One upstream HTTP/1.1 connection (an `asyncio.Protocol` parsed by httptools) and the exchange on it.

The connection holds what lives as long as the socket: the parser, the flow control and the pool
it returns to. Everything about one request and its response lives in a `ResponseCycle`, made for
each exchange (as uvicorn's `RequestResponseCycle`), so a reused connection cannot carry a waiter,
an error or a header of one response into the next.

How a response ends, as a mature HTTP/1.1 client reads it (RFC 9112 6.3): by its `Content-Length`,
by its last chunk, or, with neither, when the server closes the connection. httptools has no
end-of-input call, so the close is read here: a clean close ends a close-delimited body, a close
anywhere else breaks the response.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, cast

import httptools
import httpx

if TYPE_CHECKING:
    from .transport import HTTP11Transport, Origin

__all__ = ["READ_HIGH_WATER", "FlowControl", "InvalidResponse", "ResponseCycle", "UpstreamConnection"]

READ_HIGH_WATER = 256 * 1024
# What a status line costs beyond its reason phrase ("HTTP/1.1 200 " and CRLF), and a header line
# beyond its name and value (": " and CRLF): the head is bounded in the bytes it takes on the wire.
STATUS_LINE_BYTES = 15
HEADER_LINE_BYTES = 4


class InvalidResponse(httpx.RemoteProtocolError):
    """The upstream answered, but not with HTTP/1.1 the gateway relays."""


class FlowControl:
    """Both directions of back-pressure on one connection (as uvicorn's `FlowControl`): reading
    pauses while a response's unread body is above `READ_HIGH_WATER`; a writer waits while the
    socket's send buffer is full."""

    __slots__ = ("_transport", "read_paused", "write_paused", "_drained")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake_writer()

    def wake_writer(self) -> None:
        """Let a waiting writer look again (the buffer drained, an answer came, or the end)."""
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        if self.write_paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained


class ResponseCycle:
    """One request and its response: the head as parsed, the body chunks not yet read, how it ended.

    Bounded by one timer that re-arms itself (`watch`), rather than a timeout around every wait
    for a chunk (measured: a per-chunk timer cost ~15 us per relayed SSE event)."""

    # Slots: one of these lives as long as each open stream.
    __slots__ = (
        "connection",
        "status",
        "reason",
        "headers",
        "head",
        "head_bytes",
        "framed",
        "chunks",
        "buffered",
        "complete",
        "error",
        "waiter",
        "wrote",
        "received_any",
        "keep_alive",
        "_silence",
        "_deadline",
        "_last_data",
        "_watchdog",
    )

    def __init__(self, connection: UpstreamConnection) -> None:
        self.connection = connection
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = connection.loop.create_future()
        self.head_bytes = 0
        self.framed = True  # a Content-Length or chunked framing, or no body by status
        # A list, not a deque: it holds zero or one chunk nearly always, and a deque's first block
        # alone is ~600 bytes per open stream.
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.wrote = False
        self.received_any = False
        self.keep_alive = False
        self._silence: float | None = None
        self._deadline: float | None = None
        self._last_data = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def answered(self) -> bool:
        """Whether the final response head has arrived (and was accepted)."""
        return self.status != 0

    def watch(self, deadline: float | None, silence: float | None) -> None:
        """The head must arrive by `deadline` (loop time); after it the upstream may not go quiet
        for `silence` seconds (with no deadline, from now on). Either ends it with `ReadTimeout`."""
        loop = self.connection.loop
        self._silence, self._deadline = silence, deadline
        self._last_data = loop.time()
        if deadline is not None:
            self._watchdog = loop.call_at(deadline, self._on_watchdog)
        elif silence is not None:
            self._watchdog = loop.call_later(silence, self._on_watchdog)

    def stop_watching(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._silence = self._deadline = None

    def data_arrived(self) -> None:
        self.received_any = True
        if self._silence is not None:
            self._last_data = self.connection.loop.time()

    def head_arrived(self) -> None:
        """The deadline is met: from here on only the silence bound holds (a body that arrived with
        its head, as small JSON answers do, needs no timer at all)."""
        self._deadline = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._silence is not None and not self.complete:
            self._watchdog = self.connection.loop.call_later(self._silence, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self._watchdog = None
        if self.complete or self.error is not None:
            return
        if self._deadline is not None and not self.head.done():
            self.fail(httpx.ReadTimeout("the upstream sent no response headers in time"))
            return
        if self._silence is None:
            return
        quiet = self.connection.loop.time() - self._last_data
        if quiet >= self._silence:
            self.fail(httpx.ReadTimeout("the upstream sent nothing in time"))
        else:
            self._watchdog = self.connection.loop.call_later(self._silence - quiet, self._on_watchdog)

    def finish(self) -> None:
        self.complete = True
        self.stop_watching()
        self._wake()

    def fail(self, error: Exception) -> None:
        """End this exchange with `error`, and the connection with it."""
        if self.error is None:
            self.error = error
        self.stop_watching()
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a reader may never come
        self._wake()
        self.connection.abort()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def add_chunk(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER:
            self.connection.flow.pause_reading()
        self._wake()

    async def next_chunk(self) -> bytes | None:
        """The next body chunk, or None at the end of the body (or the error that ended it)."""
        while not self.chunks:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self.waiter = self.connection.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        chunk = self.chunks.pop(0)
        self.buffered -= len(chunk)
        if self.buffered <= READ_HIGH_WATER // 4:
            self.connection.flow.resume_reading()
        return chunk

    def reusable(self) -> bool:
        return self.complete and self.error is None and self.keep_alive and not self.connection.closed


class UpstreamConnection(asyncio.Protocol):
    """One upstream connection; `cycle` is the exchange in progress (None while idle)."""

    __slots__ = (
        "pool",
        "origin",
        "loop",
        "transport",
        "flow",
        "closed",
        "idle_since",
        "cycle",
        "_parser",
        "__weakref__",
    )

    def __init__(self, pool: HTTP11Transport, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl
        self.closed = False
        self.idle_since = 0.0
        self.cycle: ResponseCycle | None = None
        self._parser = httptools.HttpResponseParser(self)

    def start_cycle(self) -> ResponseCycle:
        self.cycle = ResponseCycle(self)
        return self.cycle

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(self.transport)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.complete:
            self.abort()  # bytes nobody asked for (a late answer, a 408 on an idle connection)
            return
        cycle.data_arrived()
        waiting = not cycle.head.done()
        if waiting:
            cycle.head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            cycle.fail(InvalidResponse("the upstream tried to upgrade the connection"))
        except httptools.HttpParserError as exc:
            cycle.fail(cycle.error or InvalidResponse(f"invalid HTTP from the upstream: {exc}"))
        if waiting and cycle.error is None:
            if cycle.head.done():
                cycle.head_arrived()
            elif cycle.head_bytes > self.pool.max_header_bytes:
                # The head alone, still incomplete, is past the bound (one endless header line too).
                cycle.fail(InvalidResponse("the upstream's response head is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        cycle = self.cycle
        if exc is not None and cycle is not None and cycle.wrote and not cycle.head.done():
            self._read_what_arrived()
        if cycle is not None and not cycle.complete and cycle.error is None:
            if not cycle.head.done():
                cycle.fail(httpx.RemoteProtocolError("the upstream closed the connection without answering"))
            elif not cycle.framed and exc is None:
                cycle.finish()  # a close-delimited body ends at a clean close (RFC 9112 6.3)
            else:
                cycle.fail(httpx.RemoteProtocolError("the upstream closed the connection mid-body"))
        if self.transport is not None:
            self.flow.wake_writer()

    def _read_what_arrived(self) -> None:
        """A write that fails (the server answered early, then reset the connection) ends the
        event loop's reading too; the answer may still wait in the socket's buffer, readable until
        the socket is closed (asyncio closes it after this call; uvloop has read it already)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as copy:  # type: ignore[union-attr]
                copy.setblocking(False)
                while self.cycle is not None and not self.cycle.head.done():
                    data = copy.recv(65536)
                    if not data:
                        return
                    self.data_received(data)
        except (OSError, ValueError, AttributeError):
            return  # nothing more to read, or no socket to read it from

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        cycle = cast(ResponseCycle, self.cycle)
        cycle.reason += reason  # possibly in pieces, when the status line is split across reads

    def on_header(self, name: bytes, value: bytes) -> None:
        cycle = cast(ResponseCycle, self.cycle)
        if cycle.head.done():
            return  # a trailer field (RFC 9110 6.5): never a header of the response
        cycle.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        cycle = cast(ResponseCycle, self.cycle)
        if cycle.head.done():
            cycle.error = InvalidResponse("the upstream sent a second response")
            raise cycle.error
        status = self._parser.get_status_code()
        size = (
            STATUS_LINE_BYTES + len(cycle.reason) + sum(len(n) + len(v) + HEADER_LINE_BYTES for n, v in cycle.headers)
        )
        if 100 <= status < 200 and status != 101:
            # An interim answer; the final one follows and is bounded on its own.
            cycle.headers, cycle.reason, cycle.head_bytes = [], b"", 0
            return
        if size > self.pool.max_header_bytes:
            cycle.error = InvalidResponse("the upstream's response head is too large")
            raise cycle.error
        codings = [value for name, value in cycle.headers if name == b"transfer-encoding"]
        if codings and b",".join(codings).strip().lower() != b"chunked":
            # Only a single `chunked` is framing the gateway can relay as is (RFC 9112 6.1).
            cycle.error = InvalidResponse("the upstream used a transfer coding other than chunked")
            raise cycle.error
        cycle.status = status
        cycle.framed = bool(codings) or status in (204, 304) or any(n == b"content-length" for n, _ in cycle.headers)
        # Read here: httptools answers for the message being parsed, not after it completes.
        cycle.keep_alive = self._parser.should_keep_alive()
        cycle.head.set_result(None)
        self.flow.wake_writer()  # a writer still sending the body sees the answer (an early 413)

    def on_body(self, body: bytes) -> None:
        cast(ResponseCycle, self.cycle).add_chunk(body)

    def on_message_complete(self) -> None:
        cycle = cast(ResponseCycle, self.cycle)
        if cycle.answered:  # not the end of an interim (1xx) answer
            cycle.finish()

    # -- used by the transport and the response stream -------------------------------------------

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise httpx.WriteError("the upstream connection is closed")
        cast(ResponseCycle, self.cycle).wrote = True
        self.transport.write(data)
        await self.flow.drain()
        cycle = cast(ResponseCycle, self.cycle)
        if self.flow.write_paused:
            cycle.keep_alive = False  # woken by an answer while part of the request is still queued
        if cycle.error is not None and not cycle.head.done():
            raise cycle.error  # the deadline passed while the upstream was not reading
        if self.closed and not cycle.head.done():
            raise httpx.WriteError("the upstream connection closed while sending")

    def abort(self) -> None:
        """Close at once: whatever is still queued for the upstream is not wanted (`close()` would
        wait to flush what the upstream is not reading)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)

    def close(self) -> None:
        if self.cycle is not None:
            self.cycle.stop_watching()
        self.abort()
