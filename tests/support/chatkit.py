"""Speaking ChatKit from tests: request bodies, SSE parsing, and one request of every type.

`REQUESTS` maps each of the 16 request types of openai-chatkit 1.6.5 to a builder that prepares
the state the op needs (a thread, a pending tool call...) through the same client, so the table
runs unchanged against the backend directly or through the gateway.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httptools
import httpx

from tests.support.rawhttp import address_of

TEXT_DELTA = "assistant_message.content_part.text_delta"
CHATKIT_PATH = "/chatkit"


def user_input(text: str, attachments: list[str] | None = None) -> dict[str, Any]:
    content = [{"type": "input_text", "text": text}]
    return {"content": content, "attachments": attachments or [], "inference_options": {}}


def post(
    client: httpx.Client,
    op: str = "",
    params: dict[str, Any] | None = None,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    """`POST` to the ChatKit path: `{"type": op, "params": params, **extra}` as JSON, or `body` as
    it is (labelled JSON unless `headers` say otherwise, for tests of what the gateway refuses)."""
    if body is not None:
        return client.post(CHATKIT_PATH, content=body, headers={"content-type": "application/json", **(headers or {})})
    return client.post(CHATKIT_PATH, json={"type": op, "params": params or {}, **extra}, headers=headers)


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """Every `data:` frame of a complete SSE body, parsed; the body must end on a frame boundary."""
    frames = [frame for frame in raw.split(b"\n\n")]
    assert frames[-1] == b"", "stream must end on a frame boundary"
    return [json.loads(frame.removeprefix(b"data: ")) for frame in frames[:-1] if frame.startswith(b"data: ")]


def deltas(events: list[dict[str, Any]]) -> list[str]:
    updates = [e["update"] for e in events if e["type"] == "thread.item.updated"]
    return [u["delta"] for u in updates if u["type"] == TEXT_DELTA]


def reply_text(events: list[dict[str, Any]]) -> str:
    return "".join(deltas(events))


def done_item(events: list[dict[str, Any]], item_type: str) -> dict[str, Any]:
    item: dict[str, Any] = next(
        e["item"] for e in events if e["type"] == "thread.item.done" and e["item"]["type"] == item_type
    )
    return item


def create_thread(client: httpx.Client, text: str, **extra: Any) -> tuple[str, list[dict[str, Any]]]:
    response = post(client, "threads.create", {"input": user_input(text)}, **extra)
    assert response.status_code == 200, response.text
    events = sse_events(response.content)
    return events[0]["thread"]["id"], events


def _streaming_item(client: httpx.Client, text: str, item_type: str) -> tuple[str, str]:
    thread_id, events = create_thread(client, text)
    return thread_id, done_item(events, item_type)["id"]


def _tool_output(c: httpx.Client) -> dict[str, Any]:
    return {"thread_id": _streaming_item(c, "/tool", "client_tool_call")[0], "result": {"ok": True}}


def _structured_input(c: httpx.Client) -> dict[str, Any]:
    thread_id, item_id = _streaming_item(c, "/ask", "structured_input")
    return {"thread_id": thread_id, "item_id": item_id, "input": {"answers": {"name": {"values": ["Ada"]}}}}


def _retry(c: httpx.Client) -> dict[str, Any]:
    thread_id, item_id = _streaming_item(c, "hello", "user_message")
    return {"thread_id": thread_id, "item_id": item_id}


def _feedback(c: httpx.Client) -> dict[str, Any]:
    thread_id, item_id = _streaming_item(c, "hello", "assistant_message")
    return {"thread_id": thread_id, "item_ids": [item_id], "kind": "positive"}


def _attachment_id(c: httpx.Client) -> dict[str, Any]:
    created = post(c, "attachments.create", {"name": "a.txt", "size": 1, "mime_type": "text/plain"}).json()
    return {"attachment_id": created["id"]}


def _thread(c: httpx.Client) -> dict[str, Any]:
    return {"thread_id": create_thread(c, "hello")[0]}


def _transcribe(c: httpx.Client) -> dict[str, Any]:
    return {"audio_base64": base64.b64encode(b"abcd").decode(), "mime_type": "audio/webm"}


# op -> (params builder, expected reply text or JSON body when small and stable, else None)
REQUESTS: dict[str, tuple[Callable[[httpx.Client], dict[str, Any]], str | None]] = {
    "threads.create": (lambda c: {"input": user_input("hi")}, "Echo: hi"),
    "threads.add_user_message": (lambda c: {**_thread(c), "input": user_input("again")}, "Echo: again"),
    "threads.add_client_tool_output": (_tool_output, 'Tool output: {"ok":true}'),
    "threads.add_structured_input": (_structured_input, 'Answers (answered): {"name":["Ada"],"colour":[]}'),
    "threads.retry_after_item": (_retry, "Echo: hello"),
    "threads.custom_action": (lambda c: {**_thread(c), "action": {"type": "demo.ping", "payload": {"n": 1}}}, None),
    "threads.get_by_id": (_thread, None),
    "threads.list": (lambda c: {"limit": 5, "order": "desc"}, None),
    "items.list": (_thread, None),
    "items.feedback": (_feedback, "{}"),
    "attachments.create": (lambda c: {"name": "a.txt", "size": 3, "mime_type": "text/plain"}, None),
    "attachments.delete": (_attachment_id, "{}"),
    "threads.update": (lambda c: {**_thread(c), "title": "Renamed"}, None),
    "threads.delete": (_thread, "{}"),
    "input.transcribe": (_transcribe, '{"text":"[4 bytes of audio/webm]"}'),
    "threads.sync_custom_action": (lambda c: {**_thread(c), "action": {"type": "demo.sync"}}, "{}"),
}

_ID = re.compile(r"\b(thr|msg|atc|cti|sti|tc|call|wf|tsk|ctc|eot)_[0-9a-zA-Z_]+\b")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?")


def normalized(text: str) -> str:
    """An answer with its generated ids and timestamps replaced, so two runs can be compared."""
    names: dict[str, str] = {}

    def rename(match: re.Match[str]) -> str:
        return names.setdefault(match.group(0), f"<{match.group(1)}{len(names)}>")

    return _TIMESTAMP.sub("<time>", _ID.sub(rename, text))


def exchange(client: httpx.Client, op: str) -> tuple[int, str, str]:
    """Prepare and send one `op`; (status, content type, normalized body)."""
    build, _ = REQUESTS[op]
    response = post(client, op, build(client))
    return response.status_code, response.headers.get("content-type", ""), normalized(response.text)


def open_stream_then_drop(host: str, port: int, token: str, *, host_header: str = "gw", text: str = "/slow 20") -> str:
    """Start a streamed reply over a raw socket, read two deltas, close the socket: the thread id."""
    import socket

    body = json.dumps({"type": "threads.create", "params": {"input": user_input(text)}}).encode()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            f"POST /chatkit HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n".encode()
            + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"text_delta") < 2:
            chunk = sock.recv(65536)
            assert chunk, "stream ended early"
            received += chunk
    thread_id: str = json.loads(received.split(b"data: ", 1)[1].split(b"\n", 1)[0])["thread"]["id"]
    return thread_id


def saw_cancellation(backend: Any, thread_id: str, timeout: float = 10.0) -> bool:
    """Whether the backend recorded the stream of `thread_id` cancelled within `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.get("thread_id") == thread_id for e in backend.events() if e["type"] == "stream_cancelled"):
            return True
        time.sleep(0.1)
    return False


SLOW_STREAM_BODY = {"type": "threads.create", "params": {"input": user_input("/slow 6")}}
FULL_SLOW_REPLY = "slow reply streamed slow reply streamed"


def assert_streams_while_backend_produces(client: httpx.Client, backend: Any) -> httpx.Headers:
    """POST a slow streaming op (the backend waits 0.5 s between words) and check that the first
    word reaches the client before the backend has stored the whole reply, and that the rest then
    arrives intact. The response headers, for the caller's own checks."""
    with client.stream("POST", CHATKIT_PATH, json=SLOW_STREAM_BODY) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        thread_id = None
        seen: list[dict[str, Any]] = []
        buffer = b""
        chunks = response.iter_raw()
        for chunk in chunks:
            buffer += chunk
            *frames, buffer = buffer.split(b"\n\n")
            seen.extend(json.loads(f.removeprefix(b"data: ")) for f in frames if f.startswith(b"data: "))
            thread_id = thread_id or next((e["thread"]["id"] for e in seen if e["type"] == "thread.created"), None)
            if deltas(seen):
                break
        # The first word is here; the backend has not finished the reply.
        assert thread_id is not None
        stored = backend.thread(thread_id)["items"]
        texts = [part["text"] for i in stored if i["type"] == "assistant_message" for part in i["content"]]
        assert FULL_SLOW_REPLY not in texts
        rest = sse_events(buffer + b"".join(chunks))
    assert "".join(deltas(seen) + deltas(rest)) == FULL_SLOW_REPLY
    assert rest[-1]["type"] == "thread.item.done"
    return response.headers


class LiveStream:
    """A streamed reply read on its own thread (raw socket, httptools), so a test can act while it
    flows: the events as they arrive, and when the body ended.

        stream = LiveStream(gateway.url, token, "/forever")
        stream.wait_for_events(2)
        ...
        assert stream.ended.wait(5)
    """

    def __init__(self, url: str, token: str, text: str = "/forever") -> None:
        body = json.dumps({"type": "threads.create", "params": {"input": user_input(text)}}).encode()
        self.events: list[dict[str, Any]] = []
        self.status = 0
        self.ended = threading.Event()
        self.ended_at: float | None = None
        self._buffer = b""
        self._changed = threading.Condition()
        self._parser = httptools.HttpResponseParser(self)
        host, port = address_of(url)
        self._sock = socket.create_connection((host, port), timeout=60)
        self._sock.sendall(
            f"POST {CHATKIT_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n".encode()
            + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self._thread = threading.Thread(target=self._read, daemon=True, name="live-stream")
        self._thread.start()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        *frames, self._buffer = (self._buffer + body).split(b"\n\n")
        with self._changed:
            self.events.extend(json.loads(f.removeprefix(b"data: ")) for f in frames if f.startswith(b"data: "))
            self._changed.notify_all()

    def on_message_complete(self) -> None:
        self.ended_at = time.monotonic()
        self.ended.set()

    def _read(self) -> None:
        try:
            while not self.ended.is_set():
                data = self._sock.recv(65536)
                if not data:
                    break
                self._parser.feed_data(data)
        except OSError:
            pass
        finally:
            with self._changed:
                self._changed.notify_all()

    @property
    def thread_id(self) -> str:
        created: str = next(e["thread"]["id"] for e in self.events if e["type"] == "thread.created")
        return created

    def wait_for_events(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` events arrived (or fail)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.events) >= count or self.ended.is_set(), timeout):
                raise AssertionError(f"{len(self.events)} events after {timeout} s, wanted {count}")
        assert len(self.events) >= count, f"the stream ended after {len(self.events)} events"

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)
