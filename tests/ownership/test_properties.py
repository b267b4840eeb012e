"""A property over the real gateway and backend: whatever bob sends, in whatever order, naming
whichever ids wherever, no request of his reaches the backend with an id alice created."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ownership.conftest import thread_of
from tests.ownership.test_gateway import THREAD_OPS
from tests.support.chatkit import post, user_input

if TYPE_CHECKING:
    from tests.support.fixtures import Backend

OPS = [*THREAD_OPS, "threads.create", "threads.list", "threads.archive", "attachments.create"]
PLACES = ["thread_id", "attachment_id", "input.attachments", "nowhere"]
SOURCES = ["alice-thread", "alice-attachment", "bob-thread", "bob-attachment", "made-up"]
STEPS = st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(PLACES), st.sampled_from(SOURCES)), max_size=6)


def params_naming(place: str, item_id: str) -> dict[str, Any]:
    if place == "input.attachments":
        return {"input": user_input("x", [item_id])}
    if place == "nowhere":
        return {"input": user_input("x"), "limit": 5}
    return {place: item_id, "input": user_input("x")}


def attachment_of(client: httpx.Client) -> str:
    attachment_id: str = post(client, "attachments.create", {"name": "a", "size": 1, "mime_type": "text/plain"}).json()[
        "id"
    ]
    return attachment_id


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_no_sequence_of_requests_by_bob_reaches_the_backend_with_an_id_alice_created(
    steps: list[tuple[str, str, str]], alice: httpx.Client, bob: httpx.Client, clean_backend: Backend
) -> None:
    alices = {"alice-thread": thread_of(alice), "alice-attachment": attachment_of(alice)}
    bobs: dict[str, str] = {}
    make = {"bob-thread": thread_of, "bob-attachment": attachment_of}
    before = len(clean_backend.requests())

    for op, place, source in steps:
        if source in alices:
            item_id = alices[source]
        elif source == "made-up":
            item_id = f"thr_{uuid.uuid4().hex[:8]}"
        else:
            item_id = bobs[source] if source in bobs else bobs.setdefault(source, make[source](bob))
        post(bob, op, params_naming(place, item_id))

    for request in clean_backend.requests()[before:]:
        if ["x-user-id", "bob"] in request["headers"]:
            assert not any(item_id in (request["body"] or "") for item_id in alices.values()), request["body"]
    assert post(alice, "items.list", {"thread_id": alices["alice-thread"]}).status_code == 200
