"""The clients' side of HTTP/1.1: uvicorn's httptools protocol, writing a head and its body together.

uvicorn writes a response's status line and headers to the socket as soon as the application
sends `http.response.start`, and the body with the next message: two `write()` calls, two
segments on the wire and two wake-ups of the client for an answer the gateway had whole (a small
JSON answer, every JSON error). Here the head waits for the body's first message, and goes out in
the same `write()`, but never longer than the event loop's next turn: an SSE head whose first
event is not there yet leaves at once, so a stream's head is never held back by the stream
(measured: docs/performance.md).

This leans on uvicorn's internals (`HttpToolsProtocol`, `RequestResponseCycle`), so uvicorn is
pinned to the version it was written against (requirements/*.lock) and
`tests/test_client_protocol.py` checks the behaviour through a running gateway.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["GatewayHttpProtocol"]


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
    next turn, whichever comes first)."""

    _head: bytes | None = None
    _flush_head: asyncio.Handle | None = None

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


class _Event(asyncio.Event):
    """`asyncio.Event` with its waiters in a list: the same behaviour, without the ~600-byte first
    block of the deque it keeps them in. A stream's request holds one (its task waits on it for the
    client's disconnect) for as long as the stream is open (docs/performance.md)."""

    def __init__(self) -> None:
        # Not asyncio.Event.__init__, which would make the deque.
        self._waiters: list[asyncio.Future[bool]] = []  # type: ignore[assignment]
        self._value = False


class GatewayHttpProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=GatewayHttpProtocol)`: uvicorn's httptools protocol, each request's
    cycle writing its head with its body."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:
            # Not started yet (its task runs on the next loop turn): it answers as above. Its event
            # has not been set or waited on yet either.
            cycle.__class__ = _OneWriteCycle
            cycle.message_event = _Event()
