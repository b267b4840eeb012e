"""HTTP/1.1 over raw sockets, for requests no client library would send (smuggling, path tricks, trickles).

`exchange()` writes bytes exactly as given, reads one response with httptools (the parser the
gateway runs), then looks a moment longer to tell whether the server closed the connection and
whether anything followed the response (a second, smuggled answer). Every read is bounded in time.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

import httptools

__all__ = ["RawResponse", "address_of", "exchange", "is_closed", "read_response", "request_bytes"]


@dataclass
class RawResponse:
    """One response as read off the wire; `status` is 0 when the server closed before answering."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False
    closed: bool = False
    trailing: bytes = b""
    elapsed: float = 0.0

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        if not self.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            code: str = self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None
        return code


class _Collector:
    def __init__(self, response: RawResponse) -> None:
        self.response = response

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.response.body += body

    def on_message_complete(self) -> None:
        self.response.complete = True


def address_of(url: str) -> tuple[str, int]:
    """`("127.0.0.1", port)` of an `http://127.0.0.1:port` base URL."""
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port.split("/", 1)[0])


def request_bytes(
    method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"", *, eol: bytes = b"\r\n"
) -> bytes:
    """A request head (and body) exactly as given: no Host, no Content-Length is added."""
    head = method.encode() + b" " + target + b" HTTP/1.1" + eol
    head += b"".join(name + b": " + value + eol for name, value in headers)
    return head + eol + body


def read_response(sock: socket.socket, *, timeout: float = 5.0, linger: float = 0.3) -> RawResponse:
    """Read one response from `sock`; then up to `linger` s more, to see a close or trailing bytes."""
    response = RawResponse()
    parser = httptools.HttpResponseParser(_Collector(response))
    started = time.monotonic()
    deadline = started + timeout
    while not response.complete and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            response.closed = True
            break
        if not chunk:
            response.closed = True
            break
        try:
            parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            break
        except httptools.HttpParserError:
            response.trailing += chunk  # bytes after a complete response, e.g. a second answer
            break
    response.elapsed = time.monotonic() - started
    if response.complete:
        response.status = parser.get_status_code()
    if not response.closed and linger > 0:
        response.closed, extra = _closed_within(sock, linger)
        response.trailing += extra
    return response


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    extra = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False, extra
        except ConnectionResetError:
            return True, extra
        if not chunk:
            return True, extra
        extra += chunk
    return False, extra


def is_closed(sock: socket.socket, seconds: float = 0.0) -> bool:
    """Whether the peer has closed `sock` (EOF or reset) within `seconds`; bytes read meanwhile are dropped."""
    return _closed_within(sock, max(seconds, 0.01))[0]


def exchange(address: tuple[str, int], data: bytes, *, timeout: float = 5.0, linger: float = 0.3) -> RawResponse:
    """Connect, send `data` as is, read one response (see `read_response`), close."""
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse and close before it has read everything; its answer is still there
        return read_response(sock, timeout=timeout, linger=linger)
