"""The clients' side of HTTP/1.1: uvicorn's httptools protocol, with two answers it gets wrong.

- **`Upgrade: h2c`** (what `curl --http2` sends over cleartext). llhttp stops at the end of the
  head of any request that asks for an upgrade, so uvicorn hands the application an empty body
  and parses the real body as the next request (a 400). The gateway speaks HTTP/1.1 only and may
  ignore the upgrade (RFC 9110 7.8): the rest of the bytes are read as the body they are.
- **HTTP/1.0 clients** know no chunked coding (RFC 9112 7.1), yet uvicorn frames every answer
  without a `Content-Length` with it. Such answers are close-delimited here (RFC 9112 6.3).

Both connections close after the answer. This leans on uvicorn's internals
(`HttpToolsProtocol`, `RequestResponseCycle`), so uvicorn is pinned to the version it was written
against and `tests/test_client_protocol.py` checks both behaviours through a running gateway.
"""

from __future__ import annotations

from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["GatewayHttpProtocol"]

FRAMING_HEADERS = (b"content-length", b"transfer-encoding")
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


class GatewayHttpProtocol(HttpToolsProtocol):
    """`uvicorn.Config(http=GatewayHttpProtocol)`: uvicorn's httptools protocol, fixed as above."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.scope.get("http_version") == "1.0" and self.cycle is not None:
            # Not started yet (its task runs on the next loop turn): it answers close-delimited.
            self.cycle.__class__ = _CloseDelimitedCycle

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
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
