"""The clients' side of HTTP/1.1: uvicorn's httptools protocol, with two answers it gets wrong and
one write where it makes two.

- **`Upgrade: h2c`** (what `curl --http2` sends over cleartext). llhttp stops at the end of the
  head of any request that asks for an upgrade, so uvicorn hands the application an empty body
  and parses the real body as the next request (a 400). The gateway speaks HTTP/1.1 only and may
  ignore the upgrade (RFC 9110 7.8): the rest of the bytes are read as the body they are.
- **HTTP/1.0 clients** know no chunked coding (RFC 9112 7.1), yet uvicorn frames every answer
  without a `Content-Length` with it. Such answers are close-delimited here (RFC 9112 6.3).

Both connections close after the answer.

- **Body chunks written directly** (`DIRECT_BODY`): each request's scope carries, under
  `scope["extensions"]["chatkit_gateway.direct_body"]`, a weak reference to its cycle, whose
  `direct_writer()` writes a streamed body's chunks to the socket, chunk-framed, without an ASGI
  `send` per chunk. The stream relay (`relay.py`) calls it from the upstream connection's own read
  callback, so a relayed chunk costs no task switch (docs/performance.md). A weak reference: the
  cycle holds the scope, and the scope must not keep the cycle alive.
- **A head and its body**: uvicorn writes a response's status line and headers to the socket as
  soon as the application sends `http.response.start`, and the body with the next message: two
  `write()` calls, two segments and two wake-ups of the client for an answer the gateway had whole
  (a small JSON answer, every JSON error). Here (HTTP/1.1) the head waits for the body's first
  message and goes out in the same `write()`, but never longer than the event loop's next turn: a
  stream's head whose first event is not there yet leaves at once (docs/performance.md).

This leans on uvicorn's internals (`HttpToolsProtocol`, `RequestResponseCycle`), so uvicorn is
pinned to the version it was written against, and `tests/test_client_protocol.py` and
`tests/test_response_writes.py` check the behaviours through a running gateway.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .relay import DIRECT_BODY

__all__ = ["DirectBody", "GatewayHttpProtocol"]


FRAMING_HEADERS = (b"content-length", b"transfer-encoding")
_PARSER = httptools.HttpRequestParser
_LOCAL_ADDRESSES: dict[tuple[str, int | None] | None, tuple[str, int | None] | None] = {}
NO_BODY = b"content-length: 0\r\n"


class _BodyOnly:
    """Callbacks of the parser that reads an ignored upgrade's body: the body and its end, handed
    to the request cycle uvicorn already started. Nothing after that body is read (the connection
    closes after the answer)."""

    def __init__(self, protocol: HttpToolsProtocol) -> None:
        self._protocol = protocol
        self._done = False

    def on_body(self, body: bytes) -> None:
        if not self._done:
            self._protocol.on_body(body)

    def on_message_complete(self) -> None:
        if not self._done:
            self._done = True
            self._protocol.on_message_complete()


class _CloseDelimitedCycle(RequestResponseCycle):
    """An answer to an HTTP/1.0 client: without a `Content-Length`, its end is the connection's close."""

    _close_delimited = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            names = {name.lower() for name, _ in message.get("headers", [])}
            if b"content-length" not in names and b"transfer-encoding" not in names:
                # Read by uvicorn as "framing decided, not chunked": no chunked header is added.
                self.chunked_encoding = False
                self._close_delimited = True
            self.keep_alive = False
            await super().send(message)
            return
        if not self._close_delimited or message["type"] != "http.response.body" or self.response_complete:
            await super().send(message)
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if self.scope["method"] != "HEAD":
            self.transport.write(message.get("body", b""))
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.close()
            self.on_response()


class _Held:
    """Stands in for the socket while uvicorn writes one message: the bytes are kept, and go out
    after `prefix` in one `write()` at `flush()`, or before a `close()` uvicorn asks for."""

    __slots__ = ("transport", "data")

    def __init__(self, transport: asyncio.Transport, prefix: bytes = b"") -> None:
        self.transport = transport
        self.data = prefix

    def write(self, data: bytes) -> None:
        self.data += data

    def flush(self) -> None:
        data, self.data = self.data, b""
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()


class _OneWriteCycle(RequestResponseCycle):
    """A request's cycle whose response head leaves with the first body message (or on the loop's
    next turn, whichever comes first), and which can tell of its client leaving by a callback."""

    _head: bytes | None = None
    _flush_head: asyncio.Handle | None = None
    _on_lost: Callable[[], None] | None = None
    connection: GatewayHttpProtocol | None = None  # set by the protocol that made it

    async def send(self, message: Any) -> None:
        transport = self.transport
        if self._head is None and (self.response_started or message["type"] != "http.response.start"):
            await super().send(message)
            return
        held = _Held(transport, self._head or b"")
        self.transport = held  # type: ignore[assignment]  # uvicorn calls write() and close() only
        try:
            await super().send(message)
        finally:
            self.transport = transport
        if self._head is None:  # the head was just written into `held`: keep it for the body
            self._head = held.data
            self._flush_head = asyncio.get_running_loop().call_soon(self._send_head)
            return
        self._head = None
        if self._flush_head is not None:
            self._flush_head.cancel()
        held.flush()

    def _send_head(self) -> None:
        head, self._head = self._head, None
        if head and not self.disconnected and not self.transport.is_closing():
            self.transport.write(head)

    def direct_writer(self) -> DirectBody | None:
        """The writer of this response's next body chunks, when they may bypass `send`: the head
        is out, the body is chunk-framed (a stream) and not over. None otherwise (send them)."""
        if not self.response_started or self.response_complete or self.disconnected or self._head is not None:
            return None
        if self.chunked_encoding is not True or self.scope["method"] == "HEAD":
            return None
        return DirectBody(self)

    def watch_disconnect(self, callback: Callable[[], None]) -> bool:
        """Call `callback` once if the client's connection is lost before the response completes:
        what a task waiting in `receive()` for `http.disconnect` learns, without the task (an open
        stream kept one for as long as it lasted). False when that cannot be watched this way (the
        client is gone already, or the response is over): wait in `receive()` instead."""
        connection = self.connection
        if connection is None or self.disconnected or self.response_complete or connection.transport.is_closing():
            return False
        # As `receive()` does before it waits: a connection whose reading is paused never sees its close.
        self.flow.resume_reading()
        self._on_lost = callback
        connection.watched = self
        connection.release_parser(self)
        return True

    def unwatch_disconnect(self) -> None:
        self._on_lost = None
        connection = self.connection
        if connection is not None and connection.watched is self:
            connection.watched = None

    def lost(self) -> None:
        """The client's connection is gone (`GatewayHttpProtocol.connection_lost`)."""
        callback, self._on_lost = self._on_lost, None
        if not self.response_complete:
            self.disconnected = True
            if callback is not None:
                callback()


class DirectBody:
    """Writes body chunks of one chunk-framed response straight to the client's socket, as `send`
    would (RFC 9112 7.1), but synchronously: from the upstream connection's read callback.

    `write` returns whether the client can take more now; False once its socket buffer is full
    (wait for `drain()`) or it has left. It never raises: it runs inside another protocol's callback.
    The end of the body (the last chunk) still goes through `send`, which completes the cycle."""

    __slots__ = ("_cycle", "_transport")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle
        self._transport = cycle.transport

    def write(self, chunk: bytes) -> bool:
        cycle = self._cycle
        if cycle.disconnected or cycle.response_complete or self._transport.is_closing():
            return False
        self._transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        return not cycle.flow.write_paused

    def end(self, chunk: bytes) -> None:
        """The body's last chunk (maybe empty) and its end in one write, completing the response
        as `send` would with the last body message (RFC 9112 7.1)."""
        cycle = self._cycle
        if cycle.disconnected or cycle.response_complete or self._transport.is_closing():
            return
        self._transport.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(chunk), chunk) if chunk else b"0\r\n\r\n")
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self._transport.close()
        cycle.on_response()

    async def drain(self) -> None:
        """Until the client's socket takes more (or the client is gone)."""
        cycle = self._cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()


class _Event(asyncio.Event):
    """`asyncio.Event` with its waiters in a list: the same behaviour, without the ~600-byte first
    block of the deque it keeps them in. A stream holds two (its request's, and its connection's
    for the socket's drain) for as long as it is open (docs/performance.md)."""

    def __init__(self) -> None:
        # Not asyncio.Event.__init__, which would make the deque.
        self._waiters: list[asyncio.Future[bool]] = []  # type: ignore[assignment]
        self._value = False


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests (it calls `appendleft`, `pop` and `bool` only), as a
    list: every connection has one, nearly always empty, and an empty deque is ~600 bytes."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class GatewayHttpProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=GatewayHttpProtocol)`: uvicorn's httptools protocol, fixed as above."""

    # The cycle whose response waits to hear of the client leaving (`_OneWriteCycle.watch_disconnect`).
    watched: _OneWriteCycle | None = None

    def release_parser(self, cycle: _OneWriteCycle) -> None:
        """While `cycle`'s response streams, its request read whole and no other begun after it,
        the connection's parser (~900 bytes with the callbacks it holds) waits for nothing: it goes,
        and is made again if the client sends more (`data_received`)."""
        if self.scope is cycle.scope and cycle.keep_alive and not cycle.more_body and type(self.parser) is _PARSER:
            self.parser = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Every connection's local address is the listening socket's: one tuple for all of them.
        self.server = _LOCAL_ADDRESSES.setdefault(self.server, self.server)
        # What uvicorn made with a deque each (a connection lasts as long as its stream): the same
        # behaviour with lists (`_Pipeline`, `_Event`). The write side's event starts set, as uvicorn's.
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        writable = _Event()
        writable.set()
        self.flow._is_writable_event = writable

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        cycle, self.watched = self.watched, None
        if cycle is not None:
            cycle.lost()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or type(cycle) is not RequestResponseCycle:
            return
        # Not started yet (its task runs on the next loop turn): it answers close-delimited
        # (HTTP/1.0), or with its head and body in one write. Its event is not used yet either.
        if self.scope.get("http_version") == "1.0":
            cycle.__class__ = _CloseDelimitedCycle
        else:
            cycle.__class__ = _OneWriteCycle
            cycle.connection = self  # type: ignore[attr-defined]  # a _OneWriteCycle now
            extensions: dict[str, object] = cycle.scope.setdefault("extensions", {})  # type: ignore[assignment]
            extensions[DIRECT_BODY] = weakref.ref(cycle)
        cycle.message_event = _Event()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.parser is None:  # let go while a response streamed (`release_parser`)
            self.parser = _PARSER(self)
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn makes it
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            message = "Invalid HTTP request received."  # as uvicorn answers it
            self.logger.warning(message)
            self.send_400_response(message)
            return
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
                return
            self._ignore_upgrade(data[upgrade.args[0] :])

    def _ignore_upgrade(self, rest: bytes) -> None:
        """Serve the request as plain HTTP/1.1: what follows its head is its body, read by a parser
        of its own (the request's parser stopped at the head) framed as the head framed it."""
        cycle = self.cycle
        if cycle is None:
            self.transport.close()
            return
        cycle.keep_alive = False
        # llhttp ended the message at its head, so uvicorn marked the body complete; the request's
        # task has not run yet (it starts on the next loop turn) and will wait for the real body.
        cycle.more_body = True
        framing = [name + b": " + value + b"\r\n" for name, value in self.headers if name in FRAMING_HEADERS]
        if len(framing) > 1:
            # Two framings (Content-Length and Transfer-Encoding, or twice either): the smuggling
            # ambiguity of RFC 9112 6.3, refused as llhttp refuses it on any other request.
            self.send_400_response("Invalid HTTP request received.")
            return
        body_parser = httptools.HttpRequestParser(_BodyOnly(self))
        self.parser = body_parser
        try:
            body_parser.feed_data(b"POST / HTTP/1.1\r\n" + (framing[0] if framing else NO_BODY) + b"\r\n" + rest)
        except httptools.HttpParserError:
            self.transport.close()
