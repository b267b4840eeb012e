"""The gateway in front of a ChatKit backend built on the npm `chatkit-node-backend-sdk`: what a
client gets through the gateway is what the backend answers directly, streams arrive as they are
written, the gateway's metadata reaches the SDK's request context, and a client that leaves ends
the upstream request.

Every thread in the backend's store is created through the gateway by the same user (a request
sent directly repeats one sent through the gateway, and the backend answers it with the same
thread), so the gateway's ownership filter leaves `threads.list` answers whole.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.chatkit import deltas, post, sse_events, user_input
from tests.support.checks import wait_for
from tests.support.differential import compare
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_token
from tests.support.idp import LoopbackIdP
from tests.support.node_sdk import NodeSdkBackend, running_node_sdk_backend

FIRST_DELTA = b'"type":"thread.item.updated"'
WAIT = 10.0


@pytest.fixture(scope="module")
def node() -> Iterator[NodeSdkBackend]:
    with running_node_sdk_backend() as backend:
        yield backend


@pytest.fixture(scope="module")
def node_gateway(node: NodeSdkBackend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    with start_gateway(gateway_config(node.url, session_idp)) as running:
        yield running


@pytest.fixture
def via(node_gateway: RunningGateway, session_idp: LoopbackIdP) -> Iterator[httpx.Client]:
    headers = bearer(user_token(session_idp))
    with httpx.Client(base_url=node_gateway.url, headers=headers, trust_env=False, timeout=WAIT) as client:
        yield client


@pytest.fixture
def direct(node: NodeSdkBackend) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.url, trust_env=False, timeout=WAIT) as client:
        yield client


def create(text: str, gate: str | None = None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `threads.create` body; with `gate`, the backend holds the answer after its first delta."""
    return {
        "type": "threads.create",
        "params": {"input": user_input(text)},
        "metadata": {**(metadata or {}), **({"gate": gate} if gate else {})},
    }


def read_through_gate(chunks: Iterator[bytes]) -> bytes:
    """What arrives up to the end of the first text delta's frame, after which the backend holds."""
    received = b""
    for chunk in chunks:
        received += chunk
        if FIRST_DELTA in received and received.endswith(b"\n\n"):
            return received
    raise AssertionError(f"the stream ended before its first delta: {received!r}")


def gated_stream(client: httpx.Client, node: NodeSdkBackend, text: str) -> tuple[httpx.Response, bytes, bytes]:
    """(response, bytes received while the backend held the stream, the whole body)."""
    gate = uuid.uuid4().hex
    with client.stream("POST", "/chatkit", json=create(text, gate)) as response:
        chunks = response.iter_raw()
        held = read_through_gate(chunks)
        wait_for(lambda: node.gate(gate) == "waiting", timeout=WAIT)
        node.release(gate)
        body = held + b"".join(chunks)
    wait_for(lambda: node.gate(gate) == "finished", timeout=WAIT)
    return response, held, body


def reply_of(body: bytes) -> str:
    done = [e["item"] for e in sse_events(body) if e["type"] == "thread.item.done"]
    assert done[-1]["type"] == "assistant_message"
    text: str = done[-1]["content"][0]["text"]
    return text


def test_threads_create_streams_through_the_gateway_as_the_backend_sends_it(
    via: httpx.Client, direct: httpx.Client, node: NodeSdkBackend
) -> None:
    text = f"stream {uuid.uuid4().hex}"
    straight, straight_held, straight_body = gated_stream(direct, node, text)
    relayed, relayed_held, relayed_body = gated_stream(via, node, text)

    assert relayed.status_code == straight.status_code == 200
    assert relayed.headers["content-type"] == straight.headers["content-type"] == "text/event-stream"
    # The first events reached the client while the backend held the rest back: no buffering.
    assert relayed_held == straight_held
    assert relayed_body == straight_body
    events = sse_events(relayed_body)
    assert [e["type"] for e in events][:2] == ["thread.created", "thread.item.done"]
    assert len(deltas(events)) == 3 and "".join(deltas(events)) == f"echo: {text}" == reply_of(relayed_body)


@pytest.mark.parametrize("params", [{}, {"limit": 1}, {"order": "asc"}], ids=["all", "first", "oldest-first"])
def test_threads_list_is_the_backends_answer(via: httpx.Client, direct: httpx.Client, params: dict[str, Any]) -> None:
    made = [sse_events(via.post("/chatkit", json=create(f"list {uuid.uuid4().hex}")).content) for _ in range(2)]
    ids = [events[0]["thread"]["id"] for events in made]

    relayed, straight = post(via, "threads.list", params), post(direct, "threads.list", params)
    assert relayed.status_code == straight.status_code == 200
    assert relayed.json() == straight.json()
    listed = [thread["id"] for thread in relayed.json()["data"]]
    assert set(ids[-1:] if "limit" in params else ids) <= set(listed)  # newest first unless asked otherwise


def test_threads_get_by_id_is_the_backends_answer(via: httpx.Client, direct: httpx.Client) -> None:
    text = f"get {uuid.uuid4().hex}"
    thread_id = sse_events(via.post("/chatkit", json=create(text)).content)[0]["thread"]["id"]

    relayed = post(via, "threads.get_by_id", {"thread_id": thread_id})
    straight = post(direct, "threads.get_by_id", {"thread_id": thread_id})
    assert relayed.status_code == straight.status_code == 200
    assert relayed.json() == straight.json()
    items = relayed.json()["items"]["data"]
    assert [item["type"] for item in items] == ["user_message", "assistant_message"]
    assert items[1]["content"][0]["text"] == f"echo: {text}"


def test_the_gateways_metadata_reaches_the_sdks_request_context(via: httpx.Client) -> None:
    forged = {"userId": "admin", "userInfo": {"id": "admin"}, "note": "kept"}
    response = via.post("/chatkit", json=create("whoami", metadata=forged), headers={"x-request-id": "node-sdk-req-1"})
    assert response.status_code == 200

    seen = json.loads(reply_of(response.content))
    metadata = seen["metadata"]
    assert metadata["userId"] == metadata["userInfo"]["id"] == seen["userId"] == "user-1"
    assert metadata["requestId"] == seen["requestId"] == "node-sdk-req-1"
    assert metadata["note"] == "kept"


def test_a_client_leaving_mid_stream_ends_the_upstream_request(via: httpx.Client, node: NodeSdkBackend) -> None:
    gate = uuid.uuid4().hex
    with via.stream("POST", "/chatkit", json=create(f"leave {gate}", gate)) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()  # held: dropping an unfinished iterator would close the connection
        read_through_gate(chunks)
        wait_for(lambda: node.gate(gate) == "waiting", timeout=WAIT)
    # Leaving the block unread closes the client's connection; the gate is never released.
    wait_for(lambda: node.gate(gate) == "closed", timeout=WAIT)


def test_the_transport_gets_the_sdks_answers_as_httpx_does(via: httpx.Client, node: NodeSdkBackend) -> None:
    thread_id = sse_events(via.post("/chatkit", json=create(f"again {uuid.uuid4().hex}")).content)[0]["thread"]["id"]
    listing = json.dumps({"type": "threads.list", "params": {}}).encode()
    message = {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input("again")}}

    listed, listed_by_httpcore = compare("POST", node.chatkit_url, listing)
    assert listed == listed_by_httpcore and listed.status == 200
    assert thread_id in [thread["id"] for thread in json.loads(listed.body)["data"]]

    streamed, streamed_by_httpcore = compare("POST", node.chatkit_url, json.dumps(message).encode())
    assert streamed == streamed_by_httpcore and streamed.status == 200
    assert reply_of(streamed.body) == "echo: again"
