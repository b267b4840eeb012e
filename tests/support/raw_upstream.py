"""A raw-socket HTTP/1.1 upstream with one mode per framing case a proxy can get wrong.

The request path names the mode (`/chatkit` takes `RawUpstream.chatkit_mode`, so the gateway's
fixed ChatKit URL reaches every mode too). Each answer is written byte for byte, in the writes
given, so the races a real server only sometimes causes happen every time:

- `close-json` / `close-sse`: no `Content-Length`, no chunking: the body ends at the close;
- `trailer-one-write`: a chunked answer whose trailer field is in the same write as its head;
- `huge-head`: a head of 8 MiB (100,000 header lines); `head-60k`: one just under 64 KiB;
- `interim-then-final`: a 40 KiB `103 Early Hints` head, then a 40 KiB final one;
- `gzip-chunked`: `Transfer-Encoding: gzip, chunked`; `chunked-twice`: `chunked, chunked`;
- `gzip-sse`: an SSE stream labelled `Content-Encoding: gzip`, quiet for `PAUSE` in the middle;
- `early-413-reset`: reads only the request head, answers 413, waits while the client is still
  sending its body, then resets the connection (SO_LINGER 0), as servers that close with unread
  data do.
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from tests.support.interop import EVENTS

__all__ = ["CLOSE_JSON", "GZIP_SSE", "RawUpstream", "running_raw_upstream"]

CLOSE_JSON = b'{"data":[],"has_more":false,"after":null}'
HEADER_LINE = b"x-filler-%06d: " + b"v" * 64 + b"\r\n"
EARLY_ANSWER_WAIT = 0.3
PAUSE = 0.3
GZIP_SSE = gzip.compress(b"".join(EVENTS), mtime=0)


def _head(status: bytes, *lines: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def _filler(count: int) -> bytes:
    return b"".join(HEADER_LINE % i for i in range(count))


def answers(mode: str) -> list[bytes]:
    """The writes that answer `mode` (except `early-413-reset`, which also times its reset)."""
    if mode == "close-json":
        return [_head(b"200 OK", b"Content-Type: application/json") + CLOSE_JSON[:10], CLOSE_JSON[10:]]
    if mode == "close-sse":
        return [_head(b"200 OK", b"Content-Type: text/event-stream"), *EVENTS]
    if mode == "trailer-one-write":
        head = _head(b"200 OK", b"Content-Type: application/json", b"Transfer-Encoding: chunked", b"Trailer: x-sum")
        return [head + b"2\r\n{}\r\n0\r\nx-sum: abc\r\nx-late: 1\r\n\r\n"]
    if mode == "huge-head":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", _filler(100_000) + b"\r\n{}"]
    if mode == "head-60k":
        return [_head(b"200 OK", b"Content-Type: application/json", b"Content-Length: 2", _filler(700)[:-2]) + b"{}"]
    if mode == "interim-then-final":
        interim = _head(b"103 Early Hints", _filler(450)[:-2])
        return [interim + _head(b"200 OK", b"Content-Length: 2", _filler(450)[:-2]) + b"{}"]
    if mode == "gzip-chunked":
        body = gzip.compress(CLOSE_JSON, mtime=0)
        head = _head(b"200 OK", b"Content-Type: application/json", b"Transfer-Encoding: gzip, chunked")
        return [head + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)]
    if mode == "gzip-sse":
        head = _head(
            b"200 OK", b"Content-Type: text/event-stream", b"Content-Encoding: gzip", b"Transfer-Encoding: chunked"
        )
        half = len(GZIP_SSE) // 2
        return [
            head + b"%x\r\n%b\r\n" % (half, GZIP_SSE[:half]),
            b"%x\r\n%b\r\n0\r\n\r\n" % (half + len(GZIP_SSE) % 2, GZIP_SSE[half:]),
        ]
    if mode == "chunked-twice":
        head = _head(b"200 OK", b"Content-Type: application/json", b"Transfer-Encoding: chunked, chunked")
        return [head + b"2\r\n{}\r\n0\r\n\r\n"]
    if mode == "early-413-reset":
        body = b'{"error":"too large"}'
        return [
            _head(b"413 Payload Too Large", b"Content-Type: application/json", b"Content-Length: %d" % len(body)) + body
        ]
    raise ValueError(f"no mode {mode!r}")


class RawUpstream:
    def __init__(self) -> None:
        self.chatkit_mode = "close-json"
        self.heads: list[bytes] = []  # every request head received, in order
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, daemon=True, name="raw-upstream")
        self._accept.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stopping.set()
        self._accept.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True, name="raw-upstream-conn")
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            with suppress(OSError):
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
            head, _, early_body = head.partition(b"\r\n\r\n")
            self.heads.append(head)
            path = head.split(b" ", 2)[1].decode("latin-1")
            mode = self.chatkit_mode if path.endswith("/chatkit") else path.rsplit("/", 1)[-1]
            self._answer(conn, head, len(early_body), mode)

    def _answer(self, conn: socket.socket, head: bytes, already: int, mode: str) -> None:
        if mode != "early-413-reset":
            self._drain_body(conn, head, already)
        with suppress(OSError):
            for write in answers(mode):
                conn.sendall(write)
                # Separate reads at the client where the mode has several writes (a long silence
                # for `gzip-sse`, where a heartbeat would be due).
                time.sleep(PAUSE if mode == "gzip-sse" else 0.01)
            if mode == "early-413-reset":
                time.sleep(EARLY_ANSWER_WAIT)  # the client is still sending the body it no longer needs
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            conn.shutdown(socket.SHUT_WR)
            self._drain_until_close(conn)

    def _drain_body(self, conn: socket.socket, head: bytes, already: int) -> None:
        length = -already
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        # Bodies in these cases are small and sent with their head, or absent.
        conn.settimeout(0.2)
        with suppress(OSError):
            while length > 0:
                data = conn.recv(65536)
                if not data:
                    return
                length -= len(data)

    def _drain_until_close(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        with suppress(OSError):
            while conn.recv(65536):
                pass


@contextmanager
def running_raw_upstream() -> Iterator[RawUpstream]:
    server = RawUpstream()
    try:
        yield server
    finally:
        server.stop()
