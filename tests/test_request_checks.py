"""Bad requests get a clear JSON error and never reach the backend."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support.checks import assert_error
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway
from tests.support.idp import LoopbackIdP

SMALL_LIMIT = 8192


@pytest.fixture(scope="module")
def small_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    config = gateway_config(backend.url, session_idp, {"server": {"max_body_bytes": SMALL_LIMIT}})
    with start_gateway(config) as running:
        yield running


@pytest.fixture
def client(small_gateway: RunningGateway, clean_backend: Backend, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=small_gateway.url, headers=bearer(token), trust_env=False, timeout=10) as http:
        yield http


JSON = {"content-type": "application/json"}
BAD_BODIES = [
    pytest.param(b"{not json", "invalid_json", id="malformed"),
    pytest.param(b"", "invalid_json", id="empty"),
    pytest.param(b"[1, 2]", "invalid_request", id="array"),
    pytest.param(b'"threads.list"', "invalid_request", id="string"),
    pytest.param(b"null", "invalid_request", id="null"),
    pytest.param(b'{"params": {}}', "invalid_request", id="no-type"),
    pytest.param(b'{"type": 7}', "invalid_request", id="type-not-string"),
    pytest.param(b'{"type": ""}', "invalid_request", id="type-empty"),
    pytest.param(b'{"type": "threads.list", "x": NaN}', "invalid_json", id="nan"),
    pytest.param(b'{"type": "threads.list", "x": Infinity}', "invalid_json", id="infinity"),
    pytest.param(
        b'{"type": "threads.list", "metadata": {}, "metadata": {"userId": "x"}}', "invalid_json", id="two-metadata"
    ),
    pytest.param(b'{"type": "threads.list", "x": "\\ud800"}', "invalid_json", id="lone-surrogate"),
    pytest.param(b'{"type": "threads.list", "x": "\xff\xfe"}', "invalid_json", id="invalid-utf8"),
    pytest.param(b'{"type": "t", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}", "invalid_json", id="deep-nesting"),
    pytest.param(b'{"type": "t", "x": ' + b"9" * 4301 + b"}", "invalid_json", id="huge-integer"),
]


@pytest.mark.parametrize(("body", "code"), BAD_BODIES)
def test_bad_body_gets_400_and_never_reaches_the_backend(
    client: httpx.Client, clean_backend: Backend, body: bytes, code: str
) -> None:
    assert_error(client.post("/chatkit", content=body, headers=JSON), 400, code)
    assert clean_backend.requests() == []


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx"],
)
def test_non_json_content_type_gets_415(client: httpx.Client, clean_backend: Backend, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/chatkit", content=b'{"type": "threads.list", "params": {}}', headers=headers)
    assert_error(response, 415, "unsupported_media_type")
    assert clean_backend.requests() == []


def test_json_with_charset_is_accepted(client: httpx.Client, clean_backend: Backend) -> None:
    response = client.post(
        "/chatkit",
        content=b'{"type":"threads.list","params":{}}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200
    assert len(clean_backend.requests()) == 1


def test_body_over_the_limit_with_content_length_gets_413(client: httpx.Client, clean_backend: Backend) -> None:
    body = b'{"type": "threads.list", "pad": "' + b"x" * SMALL_LIMIT + b'"}'
    assert_error(client.post("/chatkit", content=body, headers=JSON), 413, "payload_too_large")
    assert clean_backend.requests() == []


def test_body_over_the_limit_chunked_without_content_length_gets_413(
    client: httpx.Client, clean_backend: Backend
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"type": "threads.list", "pad": "'
        for _ in range(SMALL_LIMIT // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    response = client.post("/chatkit", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    assert clean_backend.requests() == []


def test_a_chunked_body_over_the_limit_that_came_whole_with_its_head_gets_413(
    small_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    # Whole in one write: taken from the server's cycle without `receive()` (`body.read_body`).
    host, port = small_gateway.url.removeprefix("http://").split(":")
    body = b'{"type": "threads.list", "pad": "' + b"x" * (SMALL_LIMIT + 1) + b'"}'
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /chatkit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"payload_too_large" in answer
    assert clean_backend.requests() == []


def test_a_declared_10_gb_body_is_refused_before_reading(
    small_gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    host, port = small_gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /chatkit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {token}\r\n".encode()
            + b"Content-Length: 10737418240\r\n\r\n{"
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert clean_backend.requests() == []


def test_body_at_the_limit_passes(client: httpx.Client, clean_backend: Backend) -> None:
    head = b'{"type": "threads.list", "params": {}, "pad": "'
    body = head + b"x" * (SMALL_LIMIT - len(head) - 2) + b'"}'
    assert len(body) == SMALL_LIMIT
    assert client.post("/chatkit", content=body, headers=JSON).status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_405(client: httpx.Client, clean_backend: Backend, method: str) -> None:
    response = client.request(method, "/chatkit")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]
    assert clean_backend.requests() == []


@pytest.mark.parametrize("path", ["/", "/chatkit/", "/chatkitx", "/chatkit/x", "/admin"])
def test_unknown_paths_get_404_json(client: httpx.Client, clean_backend: Backend, path: str) -> None:
    assert_error(client.post(path, json={"type": "threads.list"}), 404, "not_found")
    assert clean_backend.requests() == []


def test_healthz_answers_while_serving(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
