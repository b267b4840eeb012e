"""Attachments belong to whoever created them: learned from the `attachments.create` answer
(two-phase uploads) and from the upload answer (direct uploads), under `unknown = "deny"`, so
nothing here passes by being claimed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.ownership.conftest import refused_unseen, signed_in, thread_of
from tests.support.chatkit import done_item, post, sse_events, user_input
from tests.support.checks import assert_error
from tests.support.fixtures import Backend, start_backend
from tests.support.gateway import RunningGateway, gateway_config, start_gateway
from tests.support.procs import free_port

if TYPE_CHECKING:
    from tests.support.idp import LoopbackIdP


@pytest.fixture(scope="module")
def setup(session_idp: LoopbackIdP) -> Iterator[tuple[Backend, RunningGateway]]:
    """A backend whose upload URLs point at the gateway; the gateway refuses ids nobody owns."""
    port = free_port()
    with start_backend(public_base=f"http://127.0.0.1:{port}/chatkit/uploads") as backend:
        config = gateway_config(backend.url, session_idp, {"ownership": {"unknown": "deny"}})
        with start_gateway(config, port=port) as gateway:
            yield backend, gateway


@pytest.fixture
def users(
    setup: tuple[Backend, RunningGateway], session_idp: LoopbackIdP
) -> Iterator[tuple[Backend, httpx.Client, httpx.Client]]:
    backend, gateway = setup
    backend.reset()
    with signed_in(gateway, session_idp, "alice") as alice, signed_in(gateway, session_idp, "bob") as bob:
        yield backend, alice, bob


def two_phase(client: httpx.Client) -> str:
    created = post(client, "attachments.create", {"name": "a.txt", "size": 3, "mime_type": "text/plain"})
    assert created.status_code == 200, created.text
    upload = client.post(created.json()["upload_descriptor"]["url"], files={"file": ("a.txt", b"abc", "text/plain")})
    assert upload.status_code == 200, upload.text
    attachment_id: str = created.json()["id"]
    return attachment_id


def direct(client: httpx.Client) -> str:
    upload = client.post("/chatkit/uploads/files", files={"file": ("b.txt", b"bytes", "text/plain")})
    assert upload.status_code == 200, upload.text
    attachment_id: str = upload.json()["id"]
    return attachment_id


UPLOADS = {"two-phase": two_phase, "direct": direct}


@pytest.mark.parametrize("upload", UPLOADS)
def test_the_uploader_can_send_and_delete_their_attachment(
    upload: str, users: tuple[Backend, httpx.Client, httpx.Client]
) -> None:
    _, alice, _ = users
    attachment = UPLOADS[upload](alice)
    events = sse_events(post(alice, "threads.create", {"input": user_input("see", [attachment])}).content)
    assert done_item(events, "user_message")["attachments"][0]["id"] == attachment
    thread = events[0]["thread"]["id"]
    more = post(alice, "threads.add_user_message", {"thread_id": thread, "input": user_input("again", [attachment])})
    assert sse_events(more.content)[-1]["type"] != "error"
    assert post(alice, "attachments.delete", {"attachment_id": attachment}).status_code == 200


@pytest.mark.parametrize("upload", UPLOADS)
def test_another_user_can_neither_send_nor_delete_it(
    upload: str, users: tuple[Backend, httpx.Client, httpx.Client]
) -> None:
    backend, alice, bob = users
    attachment = UPLOADS[upload](alice)
    bobs_thread = thread_of(bob)
    attempts = [
        ("attachments.delete", {"attachment_id": attachment}),
        ("threads.create", {"input": user_input("mine now", [attachment])}),
        ("threads.add_user_message", {"thread_id": bobs_thread, "input": user_input("x", [attachment])}),
    ]
    for op, params in attempts:
        assert_error(refused_unseen(backend, bob, op, params), 404, "not_found")
    assert backend.attachment(attachment)["size"] > 0


def test_a_thread_id_is_not_an_attachment_id(users: tuple[Backend, httpx.Client, httpx.Client]) -> None:
    """One namespace for both kinds: alice's thread id presented as an attachment is still alice's."""
    backend, alice, bob = users
    thread = thread_of(alice)
    assert_error(refused_unseen(backend, bob, "attachments.delete", {"attachment_id": thread}), 404, "not_found")


def test_an_upload_answer_naming_another_users_attachment_is_not_relayed(
    users: tuple[Backend, httpx.Client, httpx.Client],
) -> None:
    """Upload URLs are the backend's to guard (docs/security.md); what the gateway can still do is
    keep the answer, which describes alice's attachment, from bob."""
    _, alice, bob = users
    created = post(alice, "attachments.create", {"name": "a.txt", "size": 3, "mime_type": "text/plain"}).json()
    response = bob.post(created["upload_descriptor"]["url"], files={"file": ("a.txt", b"xyz", "text/plain")})
    assert_error(response, 404, "not_found")
    assert created["id"] not in response.text
