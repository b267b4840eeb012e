"""One upstream HTTP/1.1 connection: an `asyncio.Protocol` parsed by httptools.

The connection holds what lives as long as the socket: the parser, the flow control and the pool
it returns to. Everything about one request and its response lives in a `ResponseCycle`
(`cycle.py`), made for each exchange, so a reused connection cannot carry a waiter, an error or a
header of one response into the next.

How a response ends, as a mature HTTP/1.1 client reads it (RFC 9112 6.3): by its `Content-Length`,
by its last chunk, or, with neither, when the server closes the connection. httptools has no
end-of-input call, so the close is read here: a clean close ends a close-delimited body, a close
anywhere else breaks the response.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from itertools import chain
from typing import TYPE_CHECKING, cast

import httptools
import httpx

from .cycle import FlowControl, ResponseCycle
from .timers import shared_timers

if TYPE_CHECKING:
    from .transport import HTTP11Transport, Origin

__all__ = ["InvalidResponse", "UpstreamConnection"]

# What a status line costs beyond its reason phrase ("HTTP/1.1 200 " and CRLF), and a header line
# beyond its name and value (": " and CRLF): the head is bounded in the bytes it takes on the wire.
STATUS_LINE_BYTES = 15
HEADER_LINE_BYTES = 4


class InvalidResponse(httpx.RemoteProtocolError):
    """The upstream answered, but not with HTTP/1.1 the gateway relays."""


class _Parsing(threading.local):
    """The upstream connection whose bytes are being parsed: `UpstreamConnection.data_received`
    names it around each `feed_data` (httptools calls the callbacks only from within it). Per
    thread: each event loop runs on one, and another thread's loop may parse between two of this
    one's callbacks. An attribute of this object, not of `ParserCallbacks`: assigning to a class
    attribute would invalidate the interpreter's caches for that class at every read."""

    connection: UpstreamConnection = None  # type: ignore[assignment]  # set while parsing


PARSING = _Parsing()


class ParserCallbacks:
    """The httptools callbacks of every upstream connection's parser, shared.

    httptools keeps the callbacks it finds on the object it is given; on a connection it would
    find bound methods, five of them (~320 bytes) made for each connection and held as long as it
    lasts, and pointing back at it. Given this class, it finds these plain functions, made once,
    each acting for the connection being parsed (`PARSING`)."""

    @staticmethod
    def on_status(reason: bytes) -> None:
        cycle: ResponseCycle = PARSING.connection.cycle  # type: ignore[assignment]  # set while parsing
        cycle.reason += reason  # possibly in pieces, when the status line is split across reads

    @staticmethod
    def on_header(name: bytes, value: bytes) -> None:
        cycle: ResponseCycle = PARSING.connection.cycle  # type: ignore[assignment]  # set while parsing
        if cycle.head.done():
            return  # a trailer field (RFC 9110 6.5): never a header of the response
        cycle.headers.append((name.lower(), value))

    @staticmethod
    def on_headers_complete() -> None:
        connection = PARSING.connection
        cycle: ResponseCycle = connection.cycle  # type: ignore[assignment]  # set while parsing
        if cycle.head.done():
            cycle.error = InvalidResponse("the upstream sent a second response")
            raise cycle.error
        status = connection._parser.get_status_code()
        headers = cycle.headers
        if 100 <= status < 200 and status != 101:
            # An interim answer; the final one follows and is bounded on its own.
            cycle.headers, cycle.reason, cycle.head_bytes = [], b"", 0
            return
        # Summed in C: this runs for every response.
        size = len(cycle.reason) + STATUS_LINE_BYTES + HEADER_LINE_BYTES * len(headers)
        if size + sum(map(len, chain.from_iterable(headers))) > connection.pool.max_header_bytes:
            cycle.error = InvalidResponse("the upstream's response head is too large")
            raise cycle.error
        codings = [value for name, value in headers if name == b"transfer-encoding"]
        if codings and b",".join(codings).strip().lower() != b"chunked":
            # Only a single `chunked` is framing the gateway can relay as is (RFC 9112 6.1).
            cycle.error = InvalidResponse("the upstream used a transfer coding other than chunked")
            raise cycle.error
        cycle.status = status
        # Read here: httptools answers for the message being parsed, not after it completes.
        cycle.keep_alive = connection._parser.should_keep_alive()
        cycle.head.set_result(None)
        connection.flow.wake_writer()  # a writer still sending the body sees the answer (an early 413)

    @staticmethod
    def on_body(body: bytes) -> None:
        PARSING.connection.cycle.add_chunk(body)  # type: ignore[union-attr]  # set while parsing

    @staticmethod
    def on_message_complete() -> None:
        cycle: ResponseCycle = PARSING.connection.cycle  # type: ignore[assignment]  # set while parsing
        if cycle.answered:  # not the end of an interim (1xx) answer
            cycle.finish()


class UpstreamConnection(asyncio.Protocol):
    """One upstream connection; `cycle` is the exchange in progress (None while idle)."""

    __slots__ = (
        "pool",
        "origin",
        "loop",
        "timers",
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
        self.timers = shared_timers(self.loop)  # a stream's silence bound (`ResponseCycle.watch`)
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl
        self.closed = False
        self.idle_since = 0.0
        self.cycle: ResponseCycle | None = None
        self._parser = httptools.HttpResponseParser(ParserCallbacks)

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
        cycle.received_any = True
        if cycle.silence is not None:
            cycle.last_data = self.loop.time()
        waiting = not cycle.head.done()
        if waiting:
            cycle.head_bytes += len(data)
        try:
            parsing = PARSING.connection
            PARSING.connection = self
            try:
                self._parser.feed_data(data)
            finally:
                PARSING.connection = parsing
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
        cycle.flush_sink()  # what this read brought goes to a direct relay in one piece

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        cycle = self.cycle
        if exc is not None and cycle is not None and cycle.wrote and not cycle.head.done():
            self._read_what_arrived()
        if cycle is not None and not cycle.complete and cycle.error is None:
            if not cycle.head.done():
                cycle.fail(httpx.RemoteProtocolError("the upstream closed the connection without answering"))
            elif exc is None and not cycle.framed():
                cycle.finish()  # a close-delimited body ends at a clean close (RFC 9112 6.3)
            else:
                cycle.fail(httpx.RemoteProtocolError("the upstream closed the connection mid-body"))
        if cycle is not None:
            cycle.flush_sink()  # a close-delimited body's end, to a direct relay
            cycle.stop_watching()  # no more bytes can come, nor can silence
        if self.transport is not None:
            self.flow.wake_writer()
        # The exchange keeps its connection (its reader may still take buffered chunks), but the
        # connection lets go of it, and of its parser: what a closed connection held goes by
        # reference counting (docs/performance.md, "Memory back").
        self.cycle = None
        del self._parser

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

    # -- used by the transport and the response stream -------------------------------------------

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise httpx.WriteError("the upstream connection is closed")
        cycle: ResponseCycle = self.cycle  # type: ignore[assignment]  # set while sending
        cycle.wrote = True
        self.transport.write(data)
        if self.flow.write_paused:
            await self.flow.drain()
        if self.flow.write_paused:
            cycle.keep_alive = False  # woken by an answer while part of the request is still queued
        if self.closed and not cycle.answered:
            # Closed, or failed (the head deadline passed while the upstream was not reading):
            # the caller reads why from the cycle's head.
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
