"""The clients' side of HTTP/1.1 as the gateway serves it (`gateway/protocol.py`, on uvicorn's
httptools protocol): an `Upgrade: h2c` request keeps its body, an HTTP/1.0 client never gets
chunked framing, and both connections close after the answer. These check the uvicorn internals
the protocol relies on, so a uvicorn upgrade that changes them fails here."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.chatkit import sse_events, user_input
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway
from tests.support.rawhttp import address_of, read_response

H2C = [
    (b"connection", b"Upgrade, HTTP2-Settings"),
    (b"upgrade", b"h2c"),
    (b"http2-settings", b"AAMAAABkAAQCAAAAAAIAAAAA"),
]
LIST = json.dumps({"type": "threads.list", "params": {}}).encode()
STREAM = json.dumps({"type": "threads.create", "params": {"input": user_input("one two three")}}).encode()


def request(version: bytes, token: str, body: bytes, extra: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """The head and body of a ChatKit POST, as separate writes."""
    headers = [
        (b"host", b"gw"),
        (b"authorization", b"Bearer " + token.encode()),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *extra,
    ]
    head = b"POST /chatkit " + version + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    return head, body


def send_in_two_writes(gateway: RunningGateway, head: bytes, body: bytes) -> socket.socket:
    sock = socket.create_connection(address_of(gateway.url), timeout=10)
    sock.sendall(head)
    time.sleep(0.1)  # the body in a read of its own, after the head was parsed
    sock.sendall(body)
    return sock


@pytest.mark.parametrize(
    ("split", "chunked"), [(False, False), (True, False), (True, True)], ids=["one-write", "body-apart", "chunked"]
)
def test_an_h2c_upgrade_is_served_as_http11_with_its_body(
    gateway: RunningGateway, token: str, split: bool, chunked: bool
) -> None:
    head, body = request(b"HTTP/1.1", token, LIST, H2C)
    if chunked:
        head = head.replace(b"content-length: %d" % len(LIST), b"transfer-encoding: chunked")
        body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    if split:
        sock = send_in_two_writes(gateway, head, body)
    else:
        sock = socket.create_connection(address_of(gateway.url), timeout=10)
        sock.sendall(head + body)
    with sock:
        response = read_response(sock, timeout=10, linger=0.5)
    assert response.status == 200, (response.status, response.body)
    assert "data" in response.json()
    assert response.closed  # no second request on a connection that asked for another protocol


def test_an_http10_client_gets_a_close_delimited_stream(gateway: RunningGateway, token: str) -> None:
    head, body = request(b"HTTP/1.0", token, STREAM, [])
    with send_in_two_writes(gateway, head, body) as sock:
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    answer_head, _, answer_body = raw.partition(b"\r\n\r\n")
    assert answer_head.startswith(b"HTTP/1.1 200"), answer_head
    assert b"transfer-encoding" not in answer_head.lower()
    assert b"connection: close" in answer_head.lower()
    events = sse_events(answer_body)  # the events as sent, no chunk-size lines among them
    assert events[0]["type"] == "thread.created" and events[-1]["type"] == "thread.item.done"


def test_an_http10_json_answer_keeps_its_length_and_closes(gateway: RunningGateway, token: str) -> None:
    head, body = request(b"HTTP/1.0", token, LIST, [])
    with send_in_two_writes(gateway, head, body) as sock:
        response = read_response(sock, timeout=10, linger=0.5)
    assert response.status == 200 and "content-length" in response.headers
    assert response.closed


@pytest.mark.parametrize(
    "framing",
    [
        [(b"content-length", b"%d" % len(LIST)), (b"transfer-encoding", b"chunked")],
        [(b"content-length", b"%d" % len(LIST)), (b"content-length", b"%d" % len(LIST))],
    ],
    ids=["cl-and-te", "cl-twice"],
)
def test_an_h2c_request_framed_twice_is_refused_and_never_relayed(
    gateway: RunningGateway, clean_backend: Backend, token: str, framing: list[tuple[bytes, bytes]]
) -> None:
    head, _ = request(b"HTTP/1.1", token, LIST, H2C)
    head = head.replace(b"content-length: %d\r\n" % len(LIST), b"".join(n + b": " + v + b"\r\n" for n, v in framing))
    with socket.create_connection(address_of(gateway.url), timeout=10) as sock:
        sock.sendall(head + b"%x\r\n%b\r\n0\r\n\r\n" % (len(LIST), LIST))
        response = read_response(sock, timeout=10, linger=0.5)
    assert response.status == 400, response
    assert clean_backend.requests() == []
