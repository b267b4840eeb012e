"""How answers leave the gateway on the client's connection (gateway/protocol.py).

An answer the gateway has whole (a small JSON answer, a JSON error) goes out as one TCP segment,
head and body together; a stream's head is never held back waiting for its first event. Segments
are counted by the kernel: `tcpi_data_segs_in` of the client socket's `TCP_INFO`.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.faulty_upstream import running_faulty_upstream
from tests.support.gateway import RunningGateway, gateway_config, start_gateway, user_token

if TYPE_CHECKING:
    from tests.support.fixtures import Backend
    from tests.support.idp import LoopbackIdP

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in is the u32 at byte 152.
DATA_SEGS_IN = struct.Struct("=I")
DATA_SEGS_IN_OFFSET = 152
TCP_INFO_BYTES = 160
LIST = json.dumps({"type": "threads.list", "params": {}}).encode()
CREATE = json.dumps({"type": "threads.create", "params": {"input": {"content": []}}}).encode()


def raw_request(gateway: RunningGateway, body: bytes, token: str | None) -> socket.socket:
    port = int(gateway.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = f"POST /chatkit HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{auth}"
    sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """Head and body of an answer with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def data_segments_in(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    segments: int = DATA_SEGS_IN.unpack_from(info, DATA_SEGS_IN_OFFSET)[0]
    return segments


@pytest.fixture(scope="module")
def writes_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    with start_gateway(gateway_config(backend.url, session_idp)) as gateway:
        yield gateway


@pytest.mark.parametrize(
    ("authorized", "status"),
    [pytest.param(True, b" 200 ", id="json-answer"), pytest.param(False, b" 401 ", id="error")],
)
def test_an_answer_the_gateway_has_whole_arrives_in_one_segment(
    writes_gateway: RunningGateway, session_idp: LoopbackIdP, authorized: bool, status: bytes
) -> None:
    token = user_token(session_idp, sub="writes") if authorized else None
    with raw_request(writes_gateway, LIST, token) as sock:
        head, body = read_answer(sock)
        assert status in head.split(b"\r\n", 1)[0] and json.loads(body)
        assert data_segments_in(sock) == 1


def test_a_stream_head_arrives_while_its_first_event_is_still_awaited(session_idp: LoopbackIdP) -> None:
    with running_faulty_upstream() as upstream, start_gateway(gateway_config(upstream.url, session_idp)) as gateway:
        upstream.behaviour = "sse_head_then_hang"
        with raw_request(gateway, CREATE, user_token(session_idp, sub="writes-stream")) as sock:
            data = b""
            deadline = time.monotonic() + 5
            while b"\r\n\r\n" not in data:
                assert time.monotonic() < deadline, data
                data += sock.recv(65536)
            head, rest = data.split(b"\r\n\r\n", 1)
            assert b" 200 " in head.split(b"\r\n", 1)[0] and b"text/event-stream" in head.lower()
            assert rest == b""  # the upstream has sent no event: only the head came
