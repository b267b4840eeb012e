"""Attachment uploads through the gateway: streamed both ways, size-bounded, path-checked."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
from collections.abc import Iterator

import httpx
import pytest

from gateway.errors import InvalidUploadPath
from gateway.uploads import upload_target
from tests.support.chatkit import done_item, post, sse_events, user_input
from tests.support.fixtures import Backend, start_backend
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway
from tests.support.idp import LoopbackIdP
from tests.support.procs import free_port

UPLOAD_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def upload_setup(session_idp: LoopbackIdP) -> Iterator[tuple[Backend, RunningGateway]]:
    """A backend whose upload URLs point at the gateway, as a deployment's public base would."""
    port = free_port()
    with start_backend(public_base=f"http://127.0.0.1:{port}/chatkit/uploads") as backend:
        config = gateway_config(backend.url, session_idp, {"server": {"max_upload_bytes": UPLOAD_LIMIT}})
        with start_gateway(config, port=port) as gateway:
            yield backend, gateway


@pytest.fixture
def client(upload_setup: tuple[Backend, RunningGateway], token: str) -> Iterator[httpx.Client]:
    upload_setup[0].reset()
    with httpx.Client(base_url=upload_setup[1].url, headers=bearer(token), trust_env=False, timeout=30) as http:
        yield http


def test_direct_upload_then_message_with_the_attachment(
    client: httpx.Client, upload_setup: tuple[Backend, RunningGateway]
) -> None:
    backend = upload_setup[0]
    data = os.urandom(300_000)
    response = client.post("/chatkit/uploads/files", files={"file": ("photo.png", data, "image/png")})

    assert response.status_code == 200, response.text
    attachment = response.json()
    assert attachment["name"] == "photo.png" and attachment["type"] == "image"
    assert backend.attachment(attachment["id"])["sha256"] == hashlib.sha256(data).hexdigest()
    events = sse_events(post(client, "threads.create", {"input": user_input("see", [attachment["id"]])}).content)
    assert done_item(events, "user_message")["attachments"][0]["id"] == attachment["id"]


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_two_phase_upload_through_the_gateway(
    client: httpx.Client, upload_setup: tuple[Backend, RunningGateway], method: str
) -> None:
    backend, gateway = upload_setup
    data = os.urandom(500_000)
    created = post(client, "attachments.create", {"name": "doc.bin", "size": len(data), "mime_type": "application/pdf"})
    descriptor = created.json()["upload_descriptor"]
    assert descriptor["url"].startswith(gateway.uploads_url)

    if method == "POST":
        done = client.post(descriptor["url"], files={"file": ("doc.bin", data, "application/pdf")})
    else:
        done = client.put(descriptor["url"], content=data, headers={"content-type": "application/pdf"})

    assert done.status_code == 200, done.text
    attachment_id = created.json()["id"]
    assert backend.attachment(attachment_id)["sha256"] == hashlib.sha256(data).hexdigest()
    events = sse_events(post(client, "threads.create", {"input": user_input("read", [attachment_id])}).content)
    assert done_item(events, "user_message")["attachments"][0]["id"] == attachment_id


def test_an_upload_keeps_the_clients_content_encoding(
    client: httpx.Client, upload_setup: tuple[Backend, RunningGateway]
) -> None:
    backend = upload_setup[0]
    created = post(client, "attachments.create", {"name": "z.pdf", "size": 1, "mime_type": "application/pdf"}).json()
    data = gzip.compress(os.urandom(50_000))

    done = client.put(
        created["upload_descriptor"]["url"],
        content=data,
        headers={"content-type": "application/pdf", "content-encoding": "gzip"},
    )

    assert done.status_code == 200, done.text
    (upload,) = [request for request in backend.requests() if request["method"] == "PUT"]
    assert [value for name, value in upload["headers"] if name == "content-encoding"] == ["gzip"]
    assert backend.attachment(created["id"])["sha256"] == hashlib.sha256(data).hexdigest()


def test_chunked_upload_without_length_is_streamed(
    client: httpx.Client, upload_setup: tuple[Backend, RunningGateway]
) -> None:
    created = post(client, "attachments.create", {"name": "c.bin", "size": 1, "mime_type": "application/pdf"}).json()
    pieces = [os.urandom(64 * 1024) for _ in range(8)]
    done = client.put(created["upload_descriptor"]["url"], content=iter(pieces))
    assert done.status_code == 200
    stored = upload_setup[0].attachment(created["id"])
    assert stored["sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_upload_over_the_limit_gets_413(client: httpx.Client, upload_setup: tuple[Backend, RunningGateway]) -> None:
    too_big = b"x" * (UPLOAD_LIMIT + 1)
    response = client.put("/chatkit/uploads/attachments/atc_x/upload", content=too_big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert upload_setup[0].requests() == []


def test_chunked_upload_over_the_limit_gets_413(client: httpx.Client) -> None:
    response = client.put("/chatkit/uploads/attachments/atc_x/upload", content=iter([b"x" * 1024 * 1024] * 3))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH"])
def test_upload_methods_other_than_post_and_put_get_405(client: httpx.Client, method: str) -> None:
    assert client.request(method, "/chatkit/uploads/files").status_code == 405


BASE = "http://backend:8001/uploads/"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"/chatkit/uploads/../admin", id="dot-dot"),
        pytest.param(b"/chatkit/uploads/a/../../admin", id="dot-dot-after-a-segment"),
        pytest.param(b"/chatkit/uploads/%2e%2e/admin", id="encoded-dot-dot"),
        pytest.param(b"/chatkit/uploads/%2E%2E/admin", id="encoded-dot-dot-upper-case"),
        pytest.param(b"/chatkit/uploads/%2e./admin", id="encoded-dot-then-dot"),
        pytest.param(b"/chatkit/uploads/a/%2e/b", id="encoded-dot"),
        pytest.param(b"/chatkit/uploads/..;/admin", id="dot-dot-semicolon"),
        pytest.param(b"/chatkit/uploads//evil.example/x", id="leading-slash"),
        pytest.param(b"/chatkit/uploads/a//b", id="empty-segment"),
        pytest.param(b"/chatkit/uploads/a\\b", id="backslash"),
        pytest.param(b"/chatkit/uploads/a%5cb", id="encoded-backslash"),
        pytest.param(b"/chatkit/uploads/a%2fb", id="encoded-slash"),
        pytest.param(b"/chatkit/uploads/a%00b", id="encoded-nul"),
        pytest.param(b"/chatkit/uploads/%252e%252e/admin", id="double-encoded-dot-dot"),
        pytest.param(b"/chatkit/uploads/%ff", id="invalid-utf8"),
        pytest.param(b"/chatkit/uploads/.", id="dot"),
        pytest.param(b"/chatkit/uploads/", id="nothing"),
        pytest.param(b"/chatkit/uploads/a b", id="space"),
        pytest.param(b"/chatkit/uploads/\xc3\xa9", id="raw-non-ascii"),
        pytest.param(b"/chatkit/upload/files", id="outside-the-prefix"),
    ],
)
def test_upload_paths_that_could_leave_the_uploads_url_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidUploadPath):
        upload_target(raw, b"/chatkit/uploads/", BASE, b"")


def test_upload_path_and_query_are_appended_to_the_uploads_url_as_received() -> None:
    raw = b"/chatkit/uploads/attachments/caf%C3%A9/upload/"
    target = upload_target(raw, b"/chatkit/uploads/", BASE, b"sig=abc%2F")
    assert target == "http://backend:8001/uploads/attachments/caf%C3%A9/upload/?sig=abc%2F"


def test_a_refused_upload_path_gets_400_over_http(upload_setup: tuple[Backend, RunningGateway], token: str) -> None:
    backend, gateway = upload_setup
    backend.reset()
    # httpx would normalise the path; send it raw.
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"PUT /chatkit/uploads/%2e%2e/_debug/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            + f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"invalid_upload_path" in answer
    assert backend.requests() == []
