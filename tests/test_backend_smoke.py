"""The test backend itself, spoken to directly over HTTP (no gateway): if these fail, so will the rest."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, get_args

import httpx
import pytest

if TYPE_CHECKING:  # conftest loads it as a plugin; importing it here first would defeat assertion rewriting
    from tests.support.fixtures import Backend

with warnings.catch_warnings():
    # chatkit.widgets (imported by chatkit.types) warns at import; the suite turns warnings into errors.
    warnings.simplefilter("ignore", DeprecationWarning)
    from chatkit.types import NonStreamingReq, StreamingReq

from tests.support.chatkit import (  # noqa: E402
    REQUESTS,
    TEXT_DELTA,
    create_thread,
    deltas,
    done_item,
    post,
    sse_events,
    user_input,
)


@pytest.fixture
def client(clean_backend: Backend) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=clean_backend.url, trust_env=False, timeout=10) as http:
        yield http


def test_threads_create_streams_thread_created_first_then_echo_word_by_word(client: httpx.Client) -> None:
    response = post(client, "threads.create", {"input": user_input("hello gateway world")})

    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert "content-length" not in response.headers
    events = sse_events(response.content)
    assert events[0]["type"] == "thread.created"
    assert deltas(events) == ["Echo:", " hello", " gateway", " world"]
    assert events[-1]["type"] == "thread.item.done"
    assert events[-1]["item"]["content"][0]["text"] == "Echo: hello gateway world"


def test_thread_list_get_and_items_answer_json(client: httpx.Client) -> None:
    thread_id, _ = create_thread(client, "remember me")

    listed = post(client, "threads.list", {"limit": 10, "order": "desc"}).json()
    fetched = post(client, "threads.get_by_id", {"thread_id": thread_id}).json()
    page = post(client, "items.list", {"thread_id": thread_id, "limit": 1, "order": "asc"}).json()

    assert [t["id"] for t in listed["data"]] == [thread_id]
    assert [i["type"] for i in fetched["items"]["data"]] == ["user_message", "assistant_message"]
    assert page["has_more"] is True and page["data"][0]["type"] == "user_message"
    assert page["after"] == page["data"][0]["id"]


def test_big_reply_is_one_delta_and_a_single_line_over_k_kib(client: httpx.Client) -> None:
    response = post(client, "threads.create", {"input": user_input("/big 500")})

    assert [len(delta) for delta in deltas(sse_events(response.content))] == [500 * 1024]
    assert max(len(line) for line in response.content.split(b"\n")) > 500 * 1024


def test_unicode_reply_keeps_characters_literal_on_the_wire(client: httpx.Client) -> None:
    response = post(client, "threads.create", {"input": user_input("/unicode")})

    assert "".join(deltas(sse_events(response.content))) == "héllo wörld 你好 🌍 \u2028 end"
    assert "\u2028".encode() in response.content and b"\\u2028" not in response.content


def test_die_truncates_the_chunked_body_mid_frame(client: httpx.Client) -> None:
    received = b""
    with client.stream(
        "POST", "/chatkit", json={"type": "threads.create", "params": {"input": user_input("/die")}}
    ) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in r.iter_raw():
                received += chunk

    assert received.startswith(b'data: {"type":"thread.created"')
    assert TEXT_DELTA.encode() in received
    assert received.endswith(b'\n\ndata: {"type":"thr')


def test_missing_thread_in_a_streaming_op_truncates_after_200(client: httpx.Client) -> None:
    params = {"thread_id": "thr_missing", "input": user_input("hi")}
    with client.stream("POST", "/chatkit", json={"type": "threads.add_user_message", "params": params}) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            r.read()


def test_whoami_reports_metadata_and_identity_headers(client: httpx.Client) -> None:
    headers = {"x-user-id": "u-1", "x-user-email": "ada@example.com", "authorization": "Bearer t"}
    response = client.post(
        "/chatkit",
        headers=headers,
        json={"type": "threads.create", "params": {"input": user_input("/whoami")}, "metadata": {"gateway": {"u": 1}}},
    )

    report = json.loads("".join(deltas(sse_events(response.content))))
    assert report == {
        "metadata": {"gateway": {"u": 1}},
        "x-user-id": "u-1",
        "x-user-email": "ada@example.com",
        "x-chatkit-identity": None,
        "authorization": "Bearer t",
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "/error Quota exceeded",
            {"type": "error", "code": "custom", "message": "Quota exceeded", "allow_retry": False},
        ),
        ("/crash", {"type": "error", "code": "stream.error", "allow_retry": True}),
    ],
    ids=["custom-error", "crash"],
)
def test_failures_in_respond_become_in_band_error_events(
    client: httpx.Client, text: str, error: dict[str, Any]
) -> None:
    _, events = create_thread(client, text)

    assert len(deltas(events)) == 1
    assert events[-1] == error


def test_disconnect_mid_stream_saves_partial_reply_and_records_cancellation(
    client: httpx.Client, backend: Backend
) -> None:
    received = b""
    with client.stream(
        "POST", "/chatkit", json={"type": "threads.create", "params": {"input": user_input("/slow 20")}}
    ) as r:
        for chunk in r.iter_raw():
            received += chunk
            if received.count(TEXT_DELTA.encode()) >= 2:
                break
    thread_id = sse_events(received[: received.rindex(b"\n\n") + 2])[0]["thread"]["id"]

    deadline = time.monotonic() + 5
    while not any(e["type"] == "stream_cancelled" for e in backend.events()):
        assert time.monotonic() < deadline, "backend never saw the disconnect"
        time.sleep(0.05)
    stored = backend.thread(thread_id)["items"]
    partial = next(i for i in stored if i["type"] == "assistant_message")
    assert partial["content"][0]["text"].startswith("slow reply")
    assert stored[-1]["type"] == "sdk_hidden_context"


def test_requests_are_recorded_as_received_except_debug_routes(client: httpx.Client, backend: Backend) -> None:
    client.post(
        "/chatkit?x=1", content=b'{"type":"threads.list","params":{}}', headers=[("x-dup", "a"), ("x-dup", "b")]
    )
    client.post("/uploads/files", content=b"\xff\xfe")

    first, second = backend.requests()
    assert (first["method"], first["path"], first["query_string"]) == ("POST", "/chatkit", "x=1")
    assert [v for n, v in first["headers"] if n == "x-dup"] == ["a", "b"]
    assert first["json"] == {"type": "threads.list", "params": {}} and first["body_length"] == 35
    assert (second["body"], second["json"], second["body_length"]) == (None, None, 2)


def test_http_errors_invalid_request_unknown_thread_and_redirect(client: httpx.Client) -> None:
    invalid = post(client, "threads.nope", {})
    missing = post(client, "threads.get_by_id", {"thread_id": "thr_missing"})
    redirect = client.get("/redirect")

    assert (invalid.status_code, invalid.json()["error"]) == (400, "invalid_request")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert (redirect.status_code, redirect.headers["location"]) == (302, "http://127.0.0.1:9/trap")


def test_direct_upload_creates_attachment_usable_in_a_message(client: httpx.Client, backend: Backend) -> None:
    uploaded = client.post("/uploads/files", files={"file": ("notes.txt", b"hello notes", "text/plain")}).json()

    assert uploaded == {"id": uploaded["id"], "name": "notes.txt", "mime_type": "text/plain", "type": "file"}
    assert backend.attachment(uploaded["id"]) == {"size": 11, "sha256": hashlib.sha256(b"hello notes").hexdigest()}
    response = post(client, "threads.create", {"input": user_input("see file", [uploaded["id"]])})
    events = sse_events(response.content)
    attachment = done_item(events, "user_message")["attachments"][0]
    assert (attachment["id"], attachment["thread_id"]) == (uploaded["id"], events[0]["thread"]["id"])


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_two_phase_upload_stores_bytes_and_serves_the_preview(
    client: httpx.Client, backend: Backend, method: str
) -> None:
    data = bytes(range(256)) * 64
    params = {"name": "cat.png", "size": len(data), "mime_type": "image/png"}
    created = post(client, "attachments.create", params).json()
    descriptor = created["upload_descriptor"]
    assert descriptor == {
        "url": f"{backend.uploads_url}attachments/{created['id']}/upload",
        "method": "POST",
        "headers": {},
    }
    assert created["preview_url"] == f"{backend.uploads_url}attachments/{created['id']}/content"

    if method == "POST":
        done = client.post(descriptor["url"], files={"file": ("cat.png", data, "image/png")})
    else:
        done = client.put(descriptor["url"], content=data)

    assert done.status_code == 200 and "upload_descriptor" not in done.json()
    assert backend.attachment(created["id"])["sha256"] == hashlib.sha256(data).hexdigest()
    preview = client.get(created["preview_url"])
    assert (preview.content, preview.headers["content-type"]) == (data, "image/png")
    events = sse_events(post(client, "threads.create", {"input": user_input("look", [created["id"]])}).content)
    assert done_item(events, "user_message")["attachments"][0]["id"] == created["id"]


def test_public_base_names_the_upload_and_preview_urls() -> None:
    from tests.support.fixtures import start_backend

    with start_backend(public_base="http://gateway.invalid:8443/up") as own:
        body = {"type": "attachments.create", "params": {"name": "a.png", "size": 1, "mime_type": "image/png"}}
        created = httpx.post(own.chatkit_url, json=body, trust_env=False).json()

    assert created["upload_descriptor"]["url"] == f"http://gateway.invalid:8443/up/attachments/{created['id']}/upload"
    assert created["preview_url"] == f"http://gateway.invalid:8443/up/attachments/{created['id']}/content"


# Every request type, with whatever state it needs; values check the answer where it is small.
def test_request_table_covers_every_type_chatkit_defines() -> None:
    defined = {cls.model_fields["type"].default for cls in get_args(StreamingReq) + get_args(NonStreamingReq)}
    assert defined == set(REQUESTS) and len(defined) == 16


@pytest.mark.parametrize("op", list(REQUESTS))
def test_every_request_type_is_answered_200(client: httpx.Client, op: str) -> None:
    build, expected = REQUESTS[op]
    response = post(client, op, build(client))

    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        events = sse_events(response.content)
        assert not [e for e in events if e["type"] == "error"]
        if expected is not None:
            assert "".join(deltas(events)) == expected
    else:
        assert response.headers["content-type"] == "application/json"
        if expected is not None:
            assert response.text == expected
    if op == "input.transcribe":
        assert response.json() == {"text": "[4 bytes of audio/webm]"}
