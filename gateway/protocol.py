"""The clients' side of HTTP/1.1: uvicorn's httptools protocol, with two answers it gets wrong,
one write where it makes two, and less work per request.

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
- **Less work per request** (docs/performance.md, "Fourth round"): the response side of the
  cycle (`_OneWriteCycle.send`) is written here, with uvicorn's framing decisions and header
  checks but the head built once; the request's cycle is made directly as the gateway's (not
  made as uvicorn's, then changed); a connection keeps one keep-alive timer rather than one per
  answer (`_keep_alive_expired`).

This leans on uvicorn's internals (`HttpToolsProtocol`, `RequestResponseCycle`), so uvicorn is
pinned to the version it was written against; `tests/test_client_protocol.py` and
`tests/test_response_writes.py` check the behaviours through a running gateway, and
`tests/test_response_cycle.py` holds the answers, byte for byte, to uvicorn's own protocol's.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
import weakref
from collections.abc import Callable
from typing import Any, Literal

import httptools
from uvicorn._types import HTTPScope
from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl, service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from .relay import DIRECT_BODY

__all__ = ["DirectBody", "GatewayHttpProtocol"]


FRAMING_HEADERS = (b"content-length", b"transfer-encoding")
_PARSER = httptools.HttpRequestParser
_LOCAL_ADDRESSES: dict[tuple[str, int | None] | None, tuple[str, int | None] | None] = {}
# The bytes uvicorn refuses in a response header's name and in its value (each of its two patterns
# matches one byte): checked with `bytes.translate`, one pass over all names and one over all values.
NOT_IN_NAMES = bytes(byte for byte in range(256) if HEADER_RE.fullmatch(bytes((byte,))))
NOT_IN_VALUES = bytes(byte for byte in range(256) if HEADER_VALUE_RE.fullmatch(bytes((byte,))))
NO_BODY = b"content-length: 0\r\n"
_ERROR_LOGGER = logging.getLogger("uvicorn.error")
_ACCESS_LOGGER = logging.getLogger("uvicorn.access")


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


class _OneWriteCycle(RequestResponseCycle):
    """A request's cycle, answering with uvicorn's framing (`RequestResponseCycle.send`, which this
    `send` replaces) in fewer writes and less work per answer:

    - the head is built once, when the application starts the answer, and held: it leaves with the
      first body message in one `write()`, or on the event loop's next turn, whichever comes first;
    - its header names and values are checked as uvicorn checks them (`HEADER_RE`,
      `HEADER_VALUE_RE`: no CR, LF, NUL or other control byte but tab in a value, no control
      byte, space or separator in a name), in one pass over all the names joined and one over all
      the values joined (`NOT_IN_NAMES`, `NOT_IN_VALUES`): each pattern matches a single byte, so
      the joined bytes hold one exactly when some name (or value) does. Names are checked
      lower-cased, as they are written; lower-casing changes only letters, none of them refused;
    - an HTTP/1.0 client's answer without a `Content-Length` is close-delimited (RFC 9112 6.3): it
      knows no chunked coding (RFC 9112 7.1), which uvicorn would frame it with.
    """

    # Slots for what this class adds to uvicorn's cycle: kept in the object, not in its `__dict__`,
    # which an attribute added after uvicorn's `__init__` may grow (the cycle lasts as long as a stream).
    __slots__ = ("_close_delimited", "_flush_head", "_head", "_on_lost", "connection")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._head: bytes | None = None
        self._flush_head: asyncio.Handle | None = None
        self._close_delimited = False
        self._on_lost: Callable[[], None] | None = None
        self.connection: GatewayHttpProtocol | None = None  # set by the protocol that made it

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._head = self._start(message)
            self._flush_head = asyncio.get_running_loop().call_soon(self._send_head)
            return
        if self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        self._write_body(message.get("body", b""), message.get("more_body", False))

    def answer(self, start: Any, body: bytes) -> bool:
        """A whole answer, `start` (an `http.response.start` message) and its one `body`, written as
        `send` writes the two messages (the head and the body in one write), without them: no
        message, coroutine or held head's handle. False when `send` must take them (the answer
        begun, the client gone, or writing paused: `send` waits for the drain)."""
        if self.response_started or self.disconnected or self.flow.write_paused:
            return False
        self._head = self._start(start)
        self._write_body(body, False)
        return True

    def _write_body(self, body: bytes, more_body: bool) -> None:
        """A body message's bytes, framed, with the held head if it has not left."""
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            data = b""
        elif self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        elif self._close_delimited:
            data = body
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            data = body
        head = self._head
        if head is not None:
            self._head = None
            if self._flush_head is not None:
                self._flush_head.cancel()
            data = head + data
        transport = self.transport
        if data and not transport.is_closing():
            transport.write(data)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete()

    def complete(self) -> None:
        """The body's end has been written: the response is over (and the connection, unless kept alive)."""
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()

    def _start(self, message: Any) -> bytes:
        """The head of the answer `message` starts, framed as uvicorn frames it (and its state set:
        the framing, the length still owed, whether the connection stays open)."""
        self.response_started = True
        self.waiting_for_100_continue = False
        status: int = message["status"]
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status,
            )
        # STATUS_LINE, then per header its name, ": ", its value and CRLF: names at 1::4, values at 3::4.
        content = [STATUS_LINE[status]]
        connection_close = False
        for name, value in (*self.default_headers, *message.get("headers", ())):
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                self.keep_alive = False
                connection_close = True
            content += (name, b": ", value, b"\r\n")
        names = b"".join(content[1::4])
        if len(names.translate(None, NOT_IN_NAMES)) != len(names):
            raise RuntimeError("Invalid HTTP header name.")
        values = b"".join(content[3::4])
        if len(values.translate(None, NOT_IN_VALUES)) != len(values):
            raise RuntimeError("Invalid HTTP header value.")
        if self.scope["http_version"] == "1.0":
            self.keep_alive = False
            if self.chunked_encoding is None:
                # Read as "framing decided, not chunked": the close ends the body.
                self.chunked_encoding = False
                self._close_delimited = True
        if not self.keep_alive and not connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)

    def _send_head(self) -> None:
        self._flush_head = None  # (a handle kept would stay for as long as a stream lasts)
        head, self._head = self._head, None
        if head and not self.disconnected and not self.transport.is_closing():
            self.transport.write(head)

    def body_in_hand(self) -> bytes | None:
        """The request's whole body when all of it has arrived and none of it was read: what
        `receive()` would answer at once, taken without a message or a wait (and without the read's
        timer, `body.read_body`). None otherwise (more to come, a `100 Continue` owed, the client
        gone, the answer over, the body read already): read it through `receive()`."""
        if (
            self.more_body
            or self.waiting_for_100_continue
            or self.disconnected
            or self.response_complete
            or not self.message_event.is_set()
        ):
            return None
        self.message_event.clear()
        self.flow.resume_reading()  # as `receive()` does: a paused connection reads its next request
        body = bytes(self.body)
        self.body = bytearray()
        return body

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
    `end` writes the last chunk with the end of the body and completes the cycle, as `send` would."""

    __slots__ = ("_cycle", "_transport")

    def __init__(self, cycle: _OneWriteCycle) -> None:
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
        cycle.complete()

    async def drain(self) -> None:
        """Until the client's socket takes more (or the client is gone)."""
        cycle = self._cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()


def flow_control(transport: asyncio.Transport) -> FlowControl:
    """uvicorn's `FlowControl` for `transport`, its write side's event (set, as uvicorn's starts)
    an `_Event`: not made as an `asyncio.Event` with its deque, then replaced."""
    flow = FlowControl.__new__(FlowControl)
    flow._transport = transport
    flow.read_paused = False
    flow.write_paused = False
    writable = _Event()
    writable.set()
    flow._is_writable_event = writable
    return flow


def remote_address(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """The client's address as uvicorn's `get_remote_addr` gives it (host and port; None for a
    Unix socket), from the address the transport recorded when the connection was accepted."""
    info = transport.get_extra_info("peername")
    return (str(info[0]), int(info[1])) if isinstance(info, tuple) else None


def local_address(transport: asyncio.BaseTransport) -> tuple[str, int | None] | None:
    """The listening address as uvicorn's `get_local_addr` gives it (host and port; a Unix
    socket's path and None), from the address the transport recorded."""
    info = transport.get_extra_info("sockname")
    if isinstance(info, tuple):
        return (str(info[0]), int(info[1]))
    if isinstance(info, str):
        return (info, None)
    return None


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

    # Slots for what this class adds to uvicorn's protocol: an attribute added to its `__dict__`
    # after uvicorn's `__init__` made it grow by ~1.5 KB, for as long as the connection lasted.
    __slots__ = ("_idle_since", "watched")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn's `HttpToolsProtocol.__init__`, attribute for attribute, without what it repeats
        # for every connection: looking its two loggers up (under the logging module's lock) and
        # making a pipeline queue its `connection_made` used to replace (docs/performance.md,
        # "Eighth round"). `tests/test_response_cycle.py` holds the two to the same attributes.
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.logger = _ERROR_LOGGER
        self.access_logger = _ACCESS_LOGGER
        self.access_log = _ACCESS_LOGGER.hasHandlers()
        self.parser = self._new_parser()
        self.ws_protocol_class = config.ws_protocol_class
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.limit_concurrency = config.limit_concurrency
        self.app_state = app_state
        self.timeout_keep_alive_task: asyncio.TimerHandle | None = None
        self.timeout_keep_alive = config.timeout_keep_alive
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.flow: FlowControl = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme: Literal["http", "https"] | None = None
        # What uvicorn makes with a deque (a connection lasts as long as its stream): the same
        # behaviour with a list (`_Pipeline`).
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        self.scope: HTTPScope = None  # type: ignore[assignment]
        self.headers: list[tuple[bytes, bytes]] = None  # type: ignore[assignment]
        self.expect_100_continue = False
        self.cycle: RequestResponseCycle = None  # type: ignore[assignment]
        # Since the connection's last answer, while no request is in progress (`_keep_alive_expired`).
        self._idle_since: float | None = None
        # The cycle whose response waits to hear of the client leaving (`_OneWriteCycle.watch_disconnect`).
        self.watched: _OneWriteCycle | None = None

    def _new_parser(self) -> httptools.HttpRequestParser:
        """The connection's request parser, made as uvicorn makes it."""
        parser = _PARSER(self)
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's `connection_made`, with the two addresses the transport recorded when it was
        # made (`get_extra_info("peername")`, `"sockname"`) rather than asked of the kernel through
        # two socket objects made for the purpose, and the flow control's event made once.
        self.connections.add(self)
        self.transport = transport
        self.flow = flow_control(transport)
        # Every connection's local address is the listening socket's: one tuple for all of them.
        server = local_address(transport)
        self.server = _LOCAL_ADDRESSES.setdefault(server, server)
        self.client = remote_address(transport)
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = "{}:{} - ".format(*self.client) if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        cycle, self.watched = self.watched, None
        if cycle is not None:
            cycle.lost()
        # Nothing of the connection points back at it once it is gone (its cycle's `connection` and
        # `on_response` do, uvicorn's parser and keep-alive timer did): what it held goes by reference
        # counting now, not at the next full collection (docs/performance.md, "Memory back").
        self.cycle = None  # type: ignore[assignment]
        self.pipeline.clear()
        self._unset_keepalive_if_required()

    def release_parser(self, cycle: _OneWriteCycle) -> None:
        """While `cycle`'s response streams, its request read whole and no other begun after it,
        the connection's parser (~900 bytes with the callbacks it holds) waits for nothing: it goes,
        and is made again if the client sends more (`data_received`)."""
        if self.scope is cycle.scope and cycle.keep_alive and not cycle.more_body and type(self.parser) is _PARSER:
            self.parser = None  # type: ignore[assignment]

    def on_headers_complete(self) -> None:
        # uvicorn's `on_headers_complete`, making the gateway's cycle (and its lighter event) at
        # once rather than uvicorn's to be replaced.
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed_url.query or b""

        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app

        existing_cycle = self.cycle
        # Not started yet (its task runs on the next loop turn).
        self.cycle = cycle = _OneWriteCycle(
            scope,
            self.transport,
            self.flow,
            self.logger,
            self.access_logger,
            self.access_log,
            self.server_state.default_headers,
            _Event(),
            self.expect_100_continue,
            http_version != "1.0" and parser.should_keep_alive(),
            self.on_response_complete,
        )
        if http_version != "1.0":  # an HTTP/1.0 answer is never chunk-framed: no direct writes
            scope["extensions"] = {DIRECT_BODY: weakref.ref(cycle)}  # type: ignore[dict-item]
            cycle.connection = self
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: queued until the answer before it is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))

    def data_received(self, data: bytes) -> None:
        self._idle_since = None
        if self.parser is None:  # let go while a response streamed (`release_parser`)
            self.parser = self._new_parser()
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

    def on_response_complete(self) -> None:
        # uvicorn's, but for the keep-alive timer (`_keep_alive_expired`).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_expired)

    def _keep_alive_expired(self) -> None:
        """Close the connection once it has been idle `timeout_keep_alive` seconds since its last
        answer. uvicorn arms a timer after every answer and cancels it at the next request's bytes;
        here a connection keeps one timer, which re-arms itself for what is left of the idle time
        (or is left unarmed while a request is in progress: the answer arms it again)."""
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None:
            return
        remaining = idle_since + self.timeout_keep_alive - self.loop.time()
        if remaining > 0:
            self.timeout_keep_alive_task = self.loop.call_later(remaining, self._keep_alive_expired)
        else:
            self.timeout_keep_alive_handler()

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
