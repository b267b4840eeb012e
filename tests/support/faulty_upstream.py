"""A raw-socket HTTP/1.1 upstream that misbehaves on purpose, for the gateway's fault tests.

`FaultyUpstream` listens on 127.0.0.1 in a background thread, with one more thread per accepted
connection. Each request is answered according to `behaviour`, read when the request has arrived,
so a test switches it between requests:

- `ok`: a small JSON answer with `Content-Length`, connection kept alive;
- `hang`: read the request, never answer;
- `sse_then_hang`: SSE headers and one event, then silence;
- `sse_head_then_hang`: SSE headers, then silence (no event);
- `json_then_hang`: JSON headers with a small `Content-Length`, part of the body, then silence;
- `big_json_then_hang`: the same with a `Content-Length` of 2 MiB (too big to be read whole);
- `json_die`: JSON headers with `Content-Length`, part of the body, then close;
- `die_mid_frame`: SSE headers, one event and half a frame, then close;
- `forever`: one SSE event every `FOREVER_PAUSE` until the peer closes (time recorded);
- `big_line`: one SSE event of `BIG_LINE_BYTES` on a single line, then a clean end and close;
- `garbage`: a status line that is not HTTP;
- `close_when_idle`: answer like `ok`, then close the idle connection after `IDLE_CLOSE_AFTER`;
- `close_on_reuse`: answer the first request of a connection like `ok`; close a reused connection
  as its next request arrives, unanswered (the keep-alive race as the client sees it).

`refuse()` closes the listening socket (connections are refused) and `listen()` reopens it on the
same port. `drop_all()` closes every open connection from the server's side. Every wait is bounded
by `HOLD_LIMIT` and by `stop()`; `stop()` closes everything and joins the threads.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BIG_LINE_BYTES", "Behaviour", "ConnectionRecord", "FaultyUpstream", "running_faulty_upstream"]

Behaviour = Literal[
    "ok",
    "hang",
    "sse_then_hang",
    "sse_head_then_hang",
    "json_then_hang",
    "big_json_then_hang",
    "json_die",
    "die_mid_frame",
    "forever",
    "big_line",
    "garbage",
    "close_when_idle",
    "close_on_reuse",
]

POLL = 0.02
HOLD_LIMIT = 30.0
FOREVER_PAUSE = 0.05
IDLE_CLOSE_AFTER = 0.2
BIG_LINE_BYTES = 500 * 1024
MAX_HEAD_BYTES = 64 * 1024
OK_BODY = b'{"data":[],"has_more":false,"after":null}'
FIRST_EVENT = b'data: {"type":"progress_update","text":"working"}\n\n'
HALF_FRAME = b'data: {"type":"thr'
GARBAGE = b"SSH-2.0-OpenSSH_9.6 definitely not HTTP\r\n\r\n"


@dataclass
class ConnectionRecord:
    """One accepted connection as the server saw it."""

    opened_at: float
    requests: int = 0
    unanswered: int = 0
    events_sent: int = 0
    peer_closed_at: float | None = None  # when the peer's close (EOF or reset) was seen
    dropped: bool = False  # closed by `drop_all()` rather than by the peer
    closed_at: float | None = None  # when the server's socket was closed, for whatever reason
    methods: list[str] = field(default_factory=list)


class _PeerClosed(Exception):
    """The peer closed the connection (or this side dropped it)."""


class _GiveUp(Exception):
    """A bound was reached (`HOLD_LIMIT`, or `stop()`)."""


class FaultyUpstream:
    def __init__(self) -> None:
        self.behaviour: Behaviour = "ok"
        self.port = 0
        self.records: list[ConnectionRecord] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._accepting = threading.Event()
        self._open: dict[socket.socket, ConnectionRecord] = {}
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def listen(self) -> None:
        """Accept connections on 127.0.0.1 (the same port again after `refuse()`)."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(POLL * 5)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepting.set()
        self._accept_thread = threading.Thread(target=self._accept, args=(listener,), daemon=True, name="faulty-accept")
        self._accept_thread.start()

    def refuse(self) -> None:
        """Close the listening socket and every connection: connection attempts are refused."""
        self._accepting.clear()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        self._accept_thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.drop_all()

    def stop(self) -> None:
        self._stopping.set()
        self.refuse()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._threads.clear()

    def drop_all(self) -> None:
        """Close every open connection from this side (each handler thread then exits)."""
        with self._lock:
            sockets = list(self._open.items())
        for sock, record in sockets:
            record.dropped = True
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def reset_records(self) -> None:
        with self._lock:
            self.records = []

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    # -- serving -------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while self._accepting.is_set() and not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            record = ConnectionRecord(opened_at=time.monotonic())
            with self._lock:
                self.records.append(record)
                self._open[conn] = record
            thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True, name="faulty-conn")
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, record: ConnectionRecord) -> None:
        conn.settimeout(POLL)
        buffer = b""
        try:
            while not self._stopping.is_set():
                method, buffer = self._read_request(conn, buffer, record)
                record.requests += 1
                record.methods.append(method)
                if not self._answer(conn, record):
                    return
        except (_PeerClosed, OSError):
            if not record.dropped:
                record.peer_closed_at = time.monotonic()
        except _GiveUp:
            pass
        finally:
            with self._lock:
                self._open.pop(conn, None)
            record.closed_at = time.monotonic()
            conn.close()

    def _recv(self, conn: socket.socket) -> bytes | None:
        """Some bytes, None after a quiet `POLL`; `_PeerClosed` at EOF or reset."""
        try:
            data = conn.recv(65536)
        except TimeoutError:
            return None
        except (ConnectionResetError, BrokenPipeError):
            raise _PeerClosed() from None
        if not data:
            raise _PeerClosed()
        return data

    def _read_request(self, conn: socket.socket, buffer: bytes, record: ConnectionRecord) -> tuple[str, bytes]:
        """The next request's method (its body read by `Content-Length`), and what followed it."""
        started = time.monotonic()
        while b"\r\n\r\n" not in buffer:
            self._check_bounds(started)
            data = self._recv(conn)
            if data:
                buffer += data
                if len(buffer) > MAX_HEAD_BYTES:
                    raise _PeerClosed()
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method = lines[0].split(b" ", 1)[0].decode("latin-1")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(buffer) < length:
            self._check_bounds(started)
            data = self._recv(conn)
            if data:
                buffer += data
        return method, buffer[length:]

    def _check_bounds(self, started: float) -> None:
        if self._stopping.is_set() or time.monotonic() - started > HOLD_LIMIT:
            raise _GiveUp()

    def _hold(self, conn: socket.socket) -> None:
        """Say nothing more until the peer closes (`_PeerClosed`) or a bound is reached (`_GiveUp`)."""
        started = time.monotonic()
        while True:
            self._check_bounds(started)
            self._recv(conn)  # anything the peer sends now is ignored

    def _send(self, conn: socket.socket, data: bytes) -> None:
        try:
            conn.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            raise _PeerClosed() from None

    def _answer(self, conn: socket.socket, record: ConnectionRecord) -> bool:
        """Answer one request; whether to read another from this connection."""
        behaviour = self.behaviour
        if behaviour in ("ok", "close_when_idle") or (behaviour == "close_on_reuse" and record.requests == 1):
            self._send(conn, _json_head(len(OK_BODY)) + OK_BODY)
            if behaviour == "close_when_idle":
                time.sleep(IDLE_CLOSE_AFTER)
                return False
            return True
        if behaviour == "close_on_reuse":
            record.unanswered += 1
            return False
        if behaviour == "hang":
            record.unanswered += 1
            self._hold(conn)
        elif behaviour == "sse_then_hang":
            self._send(conn, _sse_head() + _chunk(FIRST_EVENT))
            record.events_sent += 1
            self._hold(conn)
        elif behaviour == "sse_head_then_hang":
            self._send(conn, _sse_head())
            self._hold(conn)
        elif behaviour == "json_then_hang":
            self._send(conn, _json_head(len(OK_BODY) * 4) + OK_BODY)
            self._hold(conn)
        elif behaviour == "big_json_then_hang":
            self._send(conn, _json_head(2 * 1024 * 1024) + b'{"data":[' + b" " * 65536)
            self._hold(conn)
        elif behaviour == "json_die":
            self._send(conn, _json_head(len(OK_BODY) * 4) + OK_BODY)
        elif behaviour == "die_mid_frame":
            self._send(conn, _sse_head() + _chunk(FIRST_EVENT) + _chunk(HALF_FRAME))
            record.events_sent += 1
        elif behaviour == "forever":
            self._send(conn, _sse_head())
            started = time.monotonic()
            while True:
                self._check_bounds(started)
                n = record.events_sent
                self._send(conn, _chunk(b'data: {"type":"progress_update","text":"tick %d"}\n\n' % n))
                record.events_sent += 1
                deadline = time.monotonic() + FOREVER_PAUSE
                while time.monotonic() < deadline:
                    self._recv(conn)
        elif behaviour == "big_line":
            self._send(conn, _sse_head(close=True))
            event = big_line_event()
            for start in range(0, len(event), 64 * 1024):  # several chunks: the line spans reads
                self._send(conn, _chunk(event[start : start + 64 * 1024]))
            self._send(conn, b"0\r\n\r\n")
            record.events_sent += 1
        elif behaviour == "garbage":
            self._send(conn, GARBAGE)
            self._hold(conn)
        return False


def big_line_event() -> bytes:
    """One SSE event whose single `data:` line is longer than `BIG_LINE_BYTES`."""
    text = ("0123456789abcdef" * (BIG_LINE_BYTES // 16 + 1))[:BIG_LINE_BYTES]
    payload = {"type": "thread.item.updated", "item_id": "msg_big", "update": {"type": "x", "delta": text}}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _json_head(length: int) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length  # noqa: UP031
    )


def _sse_head(*, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        + connection
        + b"Transfer-Encoding: chunked\r\n\r\n"
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


@contextmanager
def running_faulty_upstream() -> Iterator[FaultyUpstream]:
    server = FaultyUpstream()
    server.listen()
    try:
        yield server
    finally:
        server.stop()
