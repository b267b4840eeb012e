"""Ownership through the real gateway in front of the real ChatKit backend, whose store (like
OpenAI's samples) ignores the request context: a user can act only on their own threads and
attachments, another user's id gets 404 and never reaches the backend."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.chatkit import STREAMING_TYPES
from tests.ownership.conftest import listed, refused_unseen, signed_in, thread_of
from tests.support.chatkit import REQUESTS, exchange, post, sse_events, user_input
from tests.support.checks import assert_error
from tests.support.gateway import RunningGateway, gateway_config, start_gateway
from tests.test_operations import access_lines

if TYPE_CHECKING:
    from tests.support.fixtures import Backend
    from tests.support.idp import LoopbackIdP

# Every op that names a thread (or an attachment), as alice prepares it; bob then sends the same.
THREAD_OPS = [
    "threads.add_user_message",
    "threads.add_client_tool_output",
    "threads.add_structured_input",
    "threads.retry_after_item",
    "threads.custom_action",
    "threads.get_by_id",
    "items.list",
    "items.feedback",
    "threads.update",
    "threads.delete",
    "threads.sync_custom_action",
    "attachments.delete",
]


def _attachment(client: httpx.Client) -> str:
    created = post(client, "attachments.create", {"name": "a.txt", "size": 1, "mime_type": "text/plain"})
    assert created.status_code == 200, created.text
    attachment_id: str = created.json()["id"]
    return attachment_id


# Requests that name alice's ids in other places: an op the gateway does not know, and attachments.
OTHER_WAYS: dict[str, Callable[[httpx.Client, httpx.Client], tuple[str, dict[str, Any]]]] = {
    "unknown-op": lambda a, b: ("threads.archive", {"thread_id": thread_of(a)}),
    "new-thread-with-attachment": lambda a, b: ("threads.create", {"input": user_input("x", [_attachment(a)])}),
    "own-thread-with-attachment": lambda a, b: (
        "threads.add_user_message",
        {"thread_id": thread_of(b), "input": user_input("x", [_attachment(a)])},
    ),
}


@pytest.mark.parametrize("op", THREAD_OPS)
def test_another_users_id_gets_404_and_never_reaches_the_backend(
    op: str, alice: httpx.Client, bob: httpx.Client, clean_backend: Backend
) -> None:
    params = REQUESTS[op][0](alice)
    assert_error(refused_unseen(clean_backend, bob, op, params), 404, "not_found")
    # The same request from its owner passes: the 404 was about ownership, not the request.
    assert post(alice, op, params).status_code == 200


@pytest.mark.parametrize("way", OTHER_WAYS)
def test_ids_in_unknown_ops_and_in_attachments_are_checked_too(
    way: str, alice: httpx.Client, bob: httpx.Client, clean_backend: Backend
) -> None:
    op, params = OTHER_WAYS[way](alice, bob)
    assert_error(refused_unseen(clean_backend, bob, op, params), 404, "not_found")


@pytest.mark.parametrize("op", REQUESTS)
def test_the_owner_can_do_everything(op: str, alice: httpx.Client) -> None:
    status, content_type, body = exchange(alice, op)
    assert status == 200, body
    if op in STREAMING_TYPES:
        assert content_type.startswith("text/event-stream")
        assert not [event for event in sse_events(body.encode()) if event["type"] == "error"]


def test_lists_hold_only_the_users_own_threads(
    alice: httpx.Client, bob: httpx.Client, clean_backend: Backend, direct_client: httpx.Client
) -> None:
    alices = [thread_of(alice), thread_of(alice)]
    bobs = [thread_of(bob)]
    assert listed(alice) == alices
    assert listed(bob) == bobs
    # Every other field is the backend's: a page of 2 from the backend's 3 threads.
    page = {"limit": 2, "order": "asc"}
    direct = post(direct_client, "threads.list", page).json()
    through = post(bob, "threads.list", page).json()
    assert [t["id"] for t in direct["data"]] == alices
    assert through == {**direct, "data": []}


def test_a_list_with_nothing_to_drop_is_relayed_byte_for_byte(alice: httpx.Client, direct_client: httpx.Client) -> None:
    thread_of(alice)
    body = {"type": "threads.list", "params": {"limit": 10, "order": "desc"}}
    assert alice.post("/chatkit", json=body).content == direct_client.post("/chatkit", json=body).content


def test_an_unknown_id_is_claimed_by_the_first_user_who_presents_it(
    alice: httpx.Client, bob: httpx.Client, clean_backend: Backend
) -> None:
    """`unknown = "claim"` (the default): threads made before the gateway keep working for the
    first user to present them; nobody else can take them afterwards."""
    made_before = f"thr_{uuid.uuid4().hex[:8]}"
    before = len(clean_backend.requests())
    assert post(bob, "threads.get_by_id", {"thread_id": made_before}).status_code == 404  # the backend's answer
    assert len(clean_backend.requests()) == before + 1
    assert_error(refused_unseen(clean_backend, alice, "items.list", {"thread_id": made_before}), 404, "not_found")


def test_listing_never_claims(alice: httpx.Client, bob: httpx.Client, direct_client: httpx.Client) -> None:
    made_outside = post(direct_client, "threads.create", {"input": user_input("outside")})
    outside_id = sse_events(made_outside.content)[0]["thread"]["id"]
    assert outside_id not in listed(alice)
    assert post(bob, "threads.get_by_id", {"thread_id": outside_id}).status_code == 200
    assert post(alice, "threads.get_by_id", {"thread_id": outside_id}).status_code == 404


def test_a_deleted_thread_leaves_the_store(alice: httpx.Client, gateway: RunningGateway) -> None:
    thread = thread_of(alice)
    path = gateway.config["ownership"]["sqlite_path"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT owner FROM owners WHERE id = ?", (thread,)).fetchall() == [("alice",)]
    assert post(alice, "threads.delete", {"thread_id": thread}).status_code == 200
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT owner FROM owners WHERE id = ?", (thread,)).fetchall() == []


@pytest.mark.parametrize(
    ("params", "where"),
    [
        pytest.param({"thread_id": 5}, "params.thread_id", id="number"),
        pytest.param({"thread_id": ["thr_1"]}, "params.thread_id", id="list"),
        pytest.param({"thread_id": {"id": "thr_1"}}, "params.thread_id", id="object"),
        pytest.param({"thread_id": True}, "params.thread_id", id="boolean"),
        pytest.param({"attachment_id": 7}, "params.attachment_id", id="attachment-number"),
        pytest.param({"input": user_input("x", [None, 3])}, "params.input.attachments", id="attachment-in-input"),
        pytest.param({"thread_id": "t" * 513}, "params.thread_id", id="too-long"),
    ],
)
def test_an_id_that_is_not_a_string_gets_400(
    params: dict[str, Any], where: str, bob: httpx.Client, clean_backend: Backend
) -> None:
    response = refused_unseen(clean_backend, bob, "threads.get_by_id", params)
    assert_error(response, 400, "invalid_request")
    assert where in response.json()["error"]["message"]


def test_a_null_id_is_ignored(bob: httpx.Client, clean_backend: Backend) -> None:
    before = len(clean_backend.requests())
    post(bob, "threads.create", {"input": user_input("x", [None]), "thread_id": None})
    assert len(clean_backend.requests()) == before + 1


def test_a_denial_is_counted_by_op_and_logged_without_the_owner(
    alice: httpx.Client, bob: httpx.Client, gateway: RunningGateway
) -> None:
    thread = thread_of(alice)
    request_id = f"denied-{uuid.uuid4().hex[:8]}"
    bob.post(
        "/chatkit",
        json={"type": "threads.archive", "params": {"thread_id": thread}},
        headers={"x-request-id": request_id},
    )
    bob.post("/chatkit", json={"type": "threads.get_by_id", "params": {"thread_id": thread}})

    metrics = httpx.get(f"{gateway.url}/metrics", trust_env=False).text
    assert 'chatkit_gateway_ownership_denials_total{op="other"}' in metrics
    assert 'chatkit_gateway_ownership_denials_total{op="threads.get_by_id"}' in metrics
    (line,) = [line for line in access_lines(gateway) if line["request_id"] == request_id]
    assert line["ownership"] == "denied" and line["status"] == 404 and line["user_id"] == "bob"
    assert "alice" not in json.dumps(line)


def test_denied_requests_count_against_the_rate_limit(clean_backend: Backend, session_idp: LoopbackIdP) -> None:
    config = gateway_config(clean_backend.url, session_idp, {"ratelimit": {"requests_per_minute": 2}})
    with start_gateway(config) as limited, signed_in(limited, session_idp, "alice") as alice:
        thread = thread_of(alice)
        with signed_in(limited, session_idp, "bob") as bob:
            answers = [post(bob, "threads.get_by_id", {"thread_id": thread}).status_code for _ in range(3)]
    assert answers == [404, 404, 429]


# -- unknown = "deny" ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deny_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    with start_gateway(gateway_config(backend.url, session_idp, {"ownership": {"unknown": "deny"}})) as running:
        yield running


def test_under_deny_an_unknown_id_gets_the_same_404_as_another_users(
    deny_gateway: RunningGateway, session_idp: LoopbackIdP, clean_backend: Backend
) -> None:
    with signed_in(deny_gateway, session_idp, "alice") as alice, signed_in(deny_gateway, session_idp, "bob") as bob:
        thread = thread_of(alice)
        others = refused_unseen(clean_backend, bob, "threads.get_by_id", {"thread_id": thread})
        unknown = refused_unseen(clean_backend, bob, "threads.get_by_id", {"thread_id": "thr_nobodys"})
        assert_error(others, 404, "not_found")
        assert (unknown.status_code, unknown.headers["content-type"], unknown.content) == (
            others.status_code,
            others.headers["content-type"],
            others.content,
        )
        # What alice made through the gateway was learned, so it is hers under "deny" too.
        assert post(alice, "items.list", {"thread_id": thread}).status_code == 200
