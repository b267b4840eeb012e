"""The same framing cases end to end: a client of the gateway gets what the upstream meant (or a 502
with a stable code), through the ChatKit endpoint and the upload relay."""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator

import httpx
import pytest

from gateway.config import UpstreamConfig
from tests.support.chatkit import sse_events, user_input
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_token
from tests.support.idp import LoopbackIdP
from tests.support.interop import EVENTS
from tests.support.raw_upstream import CLOSE_JSON, GZIP_SSE, RawUpstream, running_raw_upstream
from tests.support.rawhttp import address_of, read_response

STREAM = {"type": "threads.create", "params": {"input": user_input("hi")}}
LIST = {"type": "threads.list", "params": {}}


@pytest.fixture(scope="module")
def raw() -> Iterator[RawUpstream]:
    with running_raw_upstream() as server:
        yield server


@pytest.fixture(scope="module")
def relay(raw: RawUpstream, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    overrides = {"upstream": {"heartbeat_seconds": 0.1}}
    with start_gateway(gateway_config(raw.url, session_idp, overrides)) as running:
        yield running


@pytest.fixture
def client(relay: RunningGateway, session_idp: LoopbackIdP) -> Iterator[httpx.Client]:
    headers = bearer(user_token(session_idp))
    with httpx.Client(base_url=relay.url, headers=headers, trust_env=False, timeout=20) as http:
        yield http


def test_a_close_delimited_stream_arrives_whole_with_no_error_event(raw: RawUpstream, client: httpx.Client) -> None:
    raw.chatkit_mode = "close-sse"
    response = client.post("/chatkit", json=STREAM)
    assert response.status_code == 200
    assert sse_events(response.content) == sse_events(b"".join(EVENTS))


def test_a_close_delimited_json_answer_arrives_whole(raw: RawUpstream, client: httpx.Client) -> None:
    raw.chatkit_mode = "close-json"
    response = client.post("/chatkit", json=LIST)
    assert response.status_code == 200 and response.content == CLOSE_JSON


def test_a_trailer_does_not_reach_the_client_as_a_header(raw: RawUpstream, client: httpx.Client) -> None:
    raw.chatkit_mode = "trailer-one-write"
    response = client.post("/chatkit", json=LIST)
    assert response.status_code == 200 and response.content == b"{}"
    assert "x-sum" not in response.headers and "x-late" not in response.headers


def test_an_encoded_stream_keeps_its_label_and_gets_nothing_injected(raw: RawUpstream, client: httpx.Client) -> None:
    raw.chatkit_mode = "gzip-sse"
    with client.stream("POST", "/chatkit", json=STREAM) as response:
        body = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert body == GZIP_SSE  # no heartbeat, although the stream was quiet longer than heartbeat_seconds
    assert gzip.decompress(body) == b"".join(EVENTS)


@pytest.mark.parametrize("mode", ["huge-head", "gzip-chunked", "chunked-twice"])
def test_an_answer_the_gateway_cannot_relay_is_a_502(raw: RawUpstream, client: httpx.Client, mode: str) -> None:
    raw.chatkit_mode = mode
    response = client.post("/chatkit", json=LIST)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_response"


def test_an_upload_the_backend_refuses_before_reading_gets_the_backends_answer(
    relay: RunningGateway, session_idp: LoopbackIdP
) -> None:
    declared = 20 * 1024 * 1024
    head = (
        f"PUT /chatkit/uploads/early-413-reset HTTP/1.1\r\nHost: gw\r\nContent-Length: {declared}\r\n"
        f"Content-Type: application/octet-stream\r\nAuthorization: Bearer {user_token(session_idp)}\r\n\r\n"
    ).encode()
    with socket.create_connection(address_of(relay.url), timeout=10) as sock:
        sock.sendall(head + b"x" * 256 * 1024)  # a start of the body; the rest never needed
        response = read_response(sock, timeout=10, linger=0)
    assert response.status == 413, response
    assert response.body == b'{"error":"too large"}'


def test_the_keepalive_default_is_below_gunicorns_two_seconds() -> None:
    assert UpstreamConfig(url="http://backend:8000/chatkit").keepalive_expiry < 2.0
