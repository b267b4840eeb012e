"""A real ChatKit backend for the gateway's tests: a `ChatKitServer` over in-memory stores.

    python -m tests.support.backend --host 127.0.0.1 --port N [--delay SECONDS] [--public-base URL]

The user's text picks the reply (see `EchoServer.respond`): plain text is echoed word by word,
`/slow N`, `/big K`, `/unicode`, `/error MSG`, `/crash`, `/die`, `/whoami`, `/forever`, `/tool`
and `/ask` exercise the paths a proxy can get wrong. Uploads and previews live under `/uploads/`, a
prefix of their own (the gateway refuses an `upstream.uploads_url` above the ChatKit endpoint).
`/_debug/*` lets a test see what arrived (headers and bodies byte for byte) and what was stored;
those routes are not recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import re
import string
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypedDict, TypeVar

import uvicorn
from chatkit import types as ck
from chatkit.actions import Action
from chatkit.errors import CustomStreamError
from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.store import AttachmentStore, NotFoundError, Store
from pydantic import AnyUrl, BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SLOW_WORDS = ("slow", "reply", "streamed")
SLOW_PAUSE = 0.5
FOREVER_PAUSE = 0.2
UNICODE_REPLY = "héllo wörld 你好 🌍 \u2028 end"
HALF_FRAME = b'data: {"type":"thr'
REDIRECT_TRAP = "http://127.0.0.1:9/trap"
UPLOADS_PREFIX = "/uploads"


class RequestContext(TypedDict):
    metadata: dict[str, Any]
    headers: dict[str, str]


class DeliberateDisconnect(Exception):
    """Raised mid-body for `/die`: uvicorn then drops the connection without the last chunk."""


# ---------------------------------------------------------------------------------------- stores

_Record = TypeVar("_Record", bound=BaseModel)


def paginate(records: Sequence[_Record], after: str | None, limit: int, order: str) -> ck.Page[_Record]:
    ordered = list(records) if order == "asc" else list(reversed(records))
    ids = [getattr(record, "id") for record in ordered]  # noqa: B009 - items share no base class
    start = ids.index(after) + 1 if after in ids else 0
    page = ordered[start : start + limit]
    has_more = start + limit < len(ordered)
    return ck.Page(
        data=[record.model_copy(deep=True) for record in page],
        has_more=has_more,
        after=ids[start + len(page) - 1] if has_more and page else None,
    )


class MemoryStore(Store[RequestContext]):
    """Copies in and out, like a database would, so chatkit cannot mutate stored objects."""

    def __init__(self) -> None:
        self.threads: dict[str, ck.ThreadMetadata] = {}
        self.items: dict[str, list[ck.ThreadItem]] = {}
        self.attachments: dict[str, ck.Attachment] = {}

    def clear(self) -> None:
        self.threads.clear()
        self.items.clear()
        self.attachments.clear()

    async def load_thread(self, thread_id: str, context: RequestContext) -> ck.ThreadMetadata:
        if thread_id not in self.threads:
            raise NotFoundError(f"thread {thread_id} not found")
        return self.threads[thread_id].model_copy(deep=True)

    async def save_thread(self, thread: ck.ThreadMetadata, context: RequestContext) -> None:
        self.threads[thread.id] = ck.ThreadMetadata.model_validate(thread.model_dump())
        self.items.setdefault(thread.id, [])

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: RequestContext
    ) -> ck.Page[ck.ThreadItem]:
        return paginate(self.items.get(thread_id, []), after, limit, order)

    async def save_attachment(self, attachment: ck.Attachment, context: RequestContext) -> None:
        self.attachments[attachment.id] = attachment.model_copy(deep=True)

    async def load_attachment(self, attachment_id: str, context: RequestContext) -> ck.Attachment:
        if attachment_id not in self.attachments:
            raise NotFoundError(f"attachment {attachment_id} not found")
        return self.attachments[attachment_id].model_copy(deep=True)

    async def delete_attachment(self, attachment_id: str, context: RequestContext) -> None:
        self.attachments.pop(attachment_id, None)

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: RequestContext
    ) -> ck.Page[ck.ThreadMetadata]:
        return paginate(sorted(self.threads.values(), key=lambda t: t.created_at), after, limit, order)

    async def add_thread_item(self, thread_id: str, item: ck.ThreadItem, context: RequestContext) -> None:
        self.items.setdefault(thread_id, []).append(item.model_copy(deep=True))

    async def save_item(self, thread_id: str, item: ck.ThreadItem, context: RequestContext) -> None:
        items = self.items.setdefault(thread_id, [])
        for index, existing in enumerate(items):
            if existing.id == item.id:
                items[index] = item.model_copy(deep=True)
                return
        items.append(item.model_copy(deep=True))

    async def load_item(self, thread_id: str, item_id: str, context: RequestContext) -> ck.ThreadItem:
        for item in self.items.get(thread_id, []):
            if item.id == item_id:
                return item.model_copy(deep=True)
        raise NotFoundError(f"item {item_id} not found in {thread_id}")

    async def delete_thread(self, thread_id: str, context: RequestContext) -> None:
        self.threads.pop(thread_id, None)
        self.items.pop(thread_id, None)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: RequestContext) -> None:
        self.items[thread_id] = [item for item in self.items.get(thread_id, []) if item.id != item_id]


class MemoryAttachmentStore(AttachmentStore[RequestContext]):
    """Holds uploaded bytes; URLs it hands out start with `public_base` (the gateway, in tests)."""

    def __init__(self, public_base: str) -> None:
        self.public_base = public_base
        self.blobs: dict[str, bytes] = {}

    async def delete_attachment(self, attachment_id: str, context: RequestContext) -> None:
        self.blobs.pop(attachment_id, None)

    async def create_attachment(self, input: ck.AttachmentCreateParams, context: RequestContext) -> ck.Attachment:
        attachment_id = self.generate_attachment_id(input.mime_type, context)
        return self.build(attachment_id, input.name, input.mime_type, two_phase=True)

    def build(self, attachment_id: str, name: str, mime_type: str, *, two_phase: bool) -> ck.Attachment:
        base = f"{self.public_base}/attachments/{attachment_id}"
        descriptor = ck.AttachmentUploadDescriptor(url=AnyUrl(f"{base}/upload"), method="POST") if two_phase else None
        if mime_type.startswith("image/"):
            return ck.ImageAttachment(
                id=attachment_id,
                name=name,
                mime_type=mime_type,
                upload_descriptor=descriptor,
                preview_url=AnyUrl(f"{base}/content"),
            )
        return ck.FileAttachment(id=attachment_id, name=name, mime_type=mime_type, upload_descriptor=descriptor)


# ---------------------------------------------------------------------------------------- server


def split_words(text: str) -> list[str]:
    """One delta per word, whitespace kept in front, so the deltas join back to `text` exactly."""
    return re.findall(r"\s*\S+|\s+", text)


def fail_after(deltas: Iterable[str], error: Exception) -> Iterator[str]:
    yield from deltas
    raise error


def message_text(item: ck.UserMessageItem) -> str:
    return "".join(part.text for part in item.content if isinstance(part, ck.UserMessageTextContent))


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class EchoServer(ChatKitServer[RequestContext]):
    """Echoes the user word by word; a leading `/command` picks another behaviour (module docstring)."""

    def __init__(
        self, store: MemoryStore, attachments: MemoryAttachmentStore, delay: float, events: list[dict[str, Any]]
    ) -> None:
        super().__init__(store, attachments)
        self.delay = delay
        self.events = events

    async def respond(
        self, thread: ck.ThreadMetadata, input_user_message: ck.UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ck.ThreadStreamEvent]:
        if input_user_message is None:  # after a client tool output or structured input
            reply = await self._continuation(thread, context)
            async for event in self._stream_message(thread, context, split_words(reply), self.delay):
                yield event
            return
        text = message_text(input_user_message)
        command, _, arg = text.strip().partition(" ")
        if command in ("/tool", "/ask"):
            yield ck.ThreadItemDoneEvent(item=self._pending_item(command, arg, thread, context))
            return
        deltas, pause = self._reply(command, arg, text, context)
        async for event in self._stream_message(thread, context, deltas, pause):
            yield event

    def _reply(self, command: str, arg: str, text: str, context: RequestContext) -> tuple[Iterable[str], float]:
        match command:
            case "/slow":
                return split_words(" ".join(itertools.islice(itertools.cycle(SLOW_WORDS), int(arg or 20)))), SLOW_PAUSE
            case "/big":
                size = int(arg or 1) * 1024
                return [(string.ascii_letters * (size // len(string.ascii_letters) + 1))[:size]], 0.0
            case "/unicode":
                return split_words(UNICODE_REPLY), self.delay
            case "/error":
                return fail_after(["Failing"], CustomStreamError(arg or "error", allow_retry=False)), self.delay
            case "/crash":
                return fail_after(["Crashing"], RuntimeError("deliberate crash (/crash)")), self.delay
            case "/whoami":
                headers = context["headers"]
                identity = {name: headers.get(name) for name in ("x-user-id", "x-user-email", "x-chatkit-identity")}
                report = {"metadata": context["metadata"], **identity, "authorization": headers.get("authorization")}
                return [compact(report)], 0.0
            case "/forever":
                return (f" word{n}" if n else "word0" for n in itertools.count()), FOREVER_PAUSE
            case _:
                return split_words(f"Echo: {text}"), self.delay

    def _pending_item(
        self, command: str, arg: str, thread: ck.ThreadMetadata, context: RequestContext
    ) -> ck.ThreadItem:
        if command == "/tool":  # must be the thread's last item for threads.add_client_tool_output
            item_id = self.store.generate_item_id("tool_call", thread, context)
            return ck.ClientToolCallItem(
                id=item_id,
                thread_id=thread.id,
                created_at=datetime.now(),
                call_id=f"call_{item_id}",
                name="client_echo",
                arguments={"text": arg},
            )
        return ck.StructuredInputItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            inputs=[
                ck.StructuredInputFreeform(id="name", question="What is your name?"),
                ck.StructuredInputMultipleChoice(
                    id="colour",
                    question="Favourite colour?",
                    options=[ck.StructuredInputMultipleChoiceOption(value=v) for v in ("red", "green", "blue")],
                ),
            ],
        )

    async def _continuation(self, thread: ck.ThreadMetadata, context: RequestContext) -> str:
        recent = await self.store.load_thread_items(thread.id, None, 5, "desc", context)
        for item in recent.data:
            if isinstance(item, ck.ClientToolCallItem) and item.status == "completed":
                return f"Tool output: {compact(item.output)}"
            if isinstance(item, ck.StructuredInputItem) and item.status != "pending":
                answers = {i.id: i.answer.values if i.answer else [] for i in item.inputs}
                return f"Answers ({item.status}): {compact(answers)}"
        return "Continuing."

    async def _stream_message(
        self, thread: ck.ThreadMetadata, context: RequestContext, deltas: Iterable[str], pause: float
    ) -> AsyncIterator[ck.ThreadStreamEvent]:
        """The event sequence chatkit's own `stream_agent_response` produces for one text part."""
        item = ck.AssistantMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[],
        )
        yield ck.ThreadItemAddedEvent(item=item)
        empty = ck.AssistantMessageContent(text="")
        yield ck.ThreadItemUpdatedEvent(
            item_id=item.id, update=ck.AssistantMessageContentPartAdded(content_index=0, content=empty)
        )
        text = ""
        for index, delta in enumerate(deltas):
            if index and pause:
                await asyncio.sleep(pause)
            text += delta
            update = ck.AssistantMessageContentPartTextDelta(content_index=0, delta=delta)
            yield ck.ThreadItemUpdatedEvent(item_id=item.id, update=update)
        final = ck.AssistantMessageContent(text=text)
        yield ck.ThreadItemUpdatedEvent(
            item_id=item.id, update=ck.AssistantMessageContentPartDone(content_index=0, content=final)
        )
        yield ck.ThreadItemDoneEvent(item=item.model_copy(update={"content": [final]}))

    async def action(
        self, thread: ck.ThreadMetadata, action: Action[str, Any], sender: ck.WidgetItem | None, context: RequestContext
    ) -> AsyncIterator[ck.ThreadStreamEvent]:
        yield ck.NoticeEvent(level="info", message=f"Action {action.type} received")
        reply = f"Action: {action.type} {compact(action.payload)}"
        async for event in self._stream_message(thread, context, split_words(reply), self.delay):
            yield event

    async def sync_action(
        self, thread: ck.ThreadMetadata, action: Action[str, Any], sender: ck.WidgetItem | None, context: RequestContext
    ) -> ck.SyncCustomActionResponse:
        self.events.append({"type": "sync_action", "thread_id": thread.id, "action": action.type})
        return ck.SyncCustomActionResponse()  # no updated item: serialized as {}

    async def add_feedback(
        self, thread_id: str, item_ids: list[str], feedback: ck.FeedbackKind, context: RequestContext
    ) -> None:
        self.events.append({"type": "feedback", "thread_id": thread_id, "item_ids": item_ids, "kind": feedback})

    async def transcribe(self, audio_input: ck.AudioInput, context: RequestContext) -> ck.TranscriptionResult:
        return ck.TranscriptionResult(text=f"[{len(audio_input.data)} bytes of {audio_input.mime_type}]")

    async def handle_stream_cancelled(
        self, thread: ck.ThreadMetadata, pending_items: list[ck.ThreadItem], context: RequestContext
    ) -> None:
        await super().handle_stream_cancelled(thread, pending_items, context)
        # Appended after the partial reply is saved, so a test that sees the event sees the item.
        self.events.append({"type": "stream_cancelled", "thread_id": thread.id, "pending_items": len(pending_items)})


# ------------------------------------------------------------------------------------------ HTTP


class RequestRecorder:
    """Pure ASGI: reads the whole body, records the request as received, then replays the body.

    After the replay `receive` is the server's again, so Starlette still sees `http.disconnect`
    (uvicorn speaks ASGI 2.3, where StreamingResponse learns of a disconnect only that way).
    """

    def __init__(self, app: ASGIApp, log: list[dict[str, Any]]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_debug/"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            more_body = message.get("more_body", False)
        body = b"".join(chunks)
        self.log.append(describe_request(scope, body))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def describe_request(scope: Scope, body: bytes) -> dict[str, Any]:
    try:
        text: str | None = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]],
        "body": text,
        "json": parse_json(body) if text else None,
        "body_length": len(body),
    }


def client_view(attachment: ck.Attachment) -> Any:
    """The attachment as chatkit itself serializes it to clients (no `metadata`, no nulls)."""
    return attachment.model_dump(mode="json", exclude_none=True, context={"exclude_metadata": True})


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def top_level_metadata(payload: Any) -> dict[str, Any]:
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def is_die_request(payload: Any) -> bool:
    try:
        content = payload["params"]["input"]["content"]
        return "".join(part.get("text", "") for part in content).strip() == "/die"
    except (KeyError, TypeError, AttributeError):
        return False


LATE_START = re.compile(r"/late ([0-9.]+)")


def late_start_seconds(payload: Any) -> float:
    """`/late S`: the stream's first frame waits S seconds (a slow first token, as a model's)."""
    try:
        content = payload["params"]["input"]["content"]
        found = LATE_START.fullmatch("".join(part.get("text", "") for part in content).strip())
    except (KeyError, TypeError, AttributeError):
        return 0.0
    return float(found.group(1)) if found else 0.0


async def start_late(frames: AsyncIterable[bytes], seconds: float) -> AsyncIterator[bytes]:
    await asyncio.sleep(seconds)
    async for frame in frames:
        yield frame


async def die_midway(frames: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """Forward frames up to the first text delta, then half a frame, then break the connection."""
    try:
        async for frame in frames:
            yield frame
            if b"assistant_message.content_part.text_delta" in frame:
                break
        yield HALF_FRAME
        raise DeliberateDisconnect("/die: connection broken mid-frame")
    finally:
        await frames.aclose()


def create_backend_app(delay: float, public_base: str) -> Starlette:
    requests: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    store = MemoryStore()
    attachments = MemoryAttachmentStore(public_base.rstrip("/"))
    server = EchoServer(store, attachments, delay, events)

    def context_of(request: Request, metadata: dict[str, Any] | None = None) -> RequestContext:
        return RequestContext(metadata=metadata or {}, headers=dict(request.headers))

    async def chatkit_endpoint(request: Request) -> Response:
        body = await request.body()
        payload = parse_json(body)
        try:
            result = await server.process(body, context_of(request, top_level_metadata(payload)))
        except ValidationError as exc:
            detail = json.loads(exc.json(include_url=False, include_context=False, include_input=False))
            return JSONResponse({"error": "invalid_request", "detail": detail}, status_code=400)
        except NotFoundError as exc:
            return JSONResponse({"error": "not_found", "detail": str(exc)}, status_code=404)
        if isinstance(result, StreamingResult):
            frames: AsyncIterable[bytes] = die_midway(result.json_events) if is_die_request(payload) else result
            late = late_start_seconds(payload)
            if late:
                frames = start_late(frames, late)
            return StreamingResponse(frames, media_type="text/event-stream")
        assert isinstance(result, NonStreamingResult)
        return Response(result.json, media_type="application/json")

    async def chatkit_with_cookie(request: Request) -> Response:
        """`/chatkit` that also sets a per-user cookie: a proxy must neither keep nor relay it."""
        response = await chatkit_endpoint(request)
        user = request.headers.get("x-user-id", "anonymous")
        response.headers.append("set-cookie", f"backend_session={user}; Path=/; HttpOnly")
        return response

    async def read_file_field(request: Request) -> tuple[bytes, str, str] | None:
        async with request.form() as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return None
            return await upload.read(), upload.filename or "upload", upload.content_type or "application/octet-stream"

    async def direct_upload(request: Request) -> Response:
        field = await read_file_field(request)
        if field is None:
            return JSONResponse({"error": "missing_file_field"}, status_code=400)
        data, name, mime_type = field
        attachment_id = attachments.generate_attachment_id(mime_type, context_of(request))
        attachment = attachments.build(attachment_id, name, mime_type, two_phase=False)
        attachments.blobs[attachment_id] = data
        await store.save_attachment(attachment, context_of(request))
        return JSONResponse(client_view(attachment))

    async def phase_two_upload(request: Request) -> Response:
        attachment_id = request.path_params["attachment_id"]
        if attachment_id not in store.attachments:
            return JSONResponse({"error": "not_found"}, status_code=404)
        if request.method == "PUT":
            data = await request.body()
        else:
            field = await read_file_field(request)
            if field is None:
                return JSONResponse({"error": "missing_file_field"}, status_code=400)
            data = field[0]
        attachments.blobs[attachment_id] = data
        uploaded = store.attachments[attachment_id].model_copy(update={"upload_descriptor": None})
        await store.save_attachment(uploaded, context_of(request))
        return JSONResponse(client_view(uploaded))

    async def attachment_content(request: Request) -> Response:
        attachment_id = request.path_params["attachment_id"]
        if attachment_id not in attachments.blobs or attachment_id not in store.attachments:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return Response(attachments.blobs[attachment_id], media_type=store.attachments[attachment_id].mime_type)

    async def debug_attachment(request: Request) -> Response:
        data = attachments.blobs.get(request.path_params["attachment_id"])
        if data is None:
            return JSONResponse({"error": "not_found"}, status_code=404)
        return JSONResponse({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})

    async def debug_thread(request: Request) -> Response:
        thread_id = request.path_params["thread_id"]
        if thread_id not in store.threads:
            return JSONResponse({"error": "not_found"}, status_code=404)
        items = [item.model_dump(mode="json") for item in store.items.get(thread_id, [])]
        return JSONResponse({"thread": store.threads[thread_id].model_dump(mode="json"), "items": items})

    async def debug_reset(request: Request) -> Response:
        requests.clear()
        events.clear()
        store.clear()
        attachments.blobs.clear()
        return JSONResponse({"ok": True})

    async def debug_requests(request: Request) -> Response:
        return JSONResponse(requests)

    async def debug_events(request: Request) -> Response:
        return JSONResponse(events)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def redirect(request: Request) -> Response:
        return RedirectResponse(REDIRECT_TRAP, status_code=302)

    routes = [
        Route("/chatkit", chatkit_endpoint, methods=["POST"]),
        Route("/cookie/chatkit", chatkit_with_cookie, methods=["POST"]),
        Route(f"{UPLOADS_PREFIX}/files", direct_upload, methods=["POST"]),
        Route(f"{UPLOADS_PREFIX}/attachments/{{attachment_id}}/upload", phase_two_upload, methods=["POST", "PUT"]),
        Route(f"{UPLOADS_PREFIX}/attachments/{{attachment_id}}/content", attachment_content, methods=["GET"]),
        Route("/redirect", redirect, methods=["GET", "POST"]),
        Route("/_debug/health", health, methods=["GET"]),
        Route("/_debug/requests", debug_requests, methods=["GET"]),
        Route("/_debug/reset", debug_reset, methods=["POST"]),
        Route("/_debug/events", debug_events, methods=["GET"]),
        Route("/_debug/threads/{thread_id}", debug_thread, methods=["GET"]),
        Route("/_debug/attachments/{attachment_id}", debug_attachment, methods=["GET"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(RequestRecorder, log=requests)])


def traced(app: ASGIApp, otlp_endpoint: str) -> ASGIApp:
    """The backend as a traced service: OpenTelemetry's own ASGI instrumentation continues the
    `traceparent` the gateway sends, and the SDK exports the spans to `otlp_endpoint`."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "chatkit-backend"}))
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    return OpenTelemetryMiddleware(app, tracer_provider=provider, exclude_spans=["receive", "send"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.backend", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between streamed words")
    parser.add_argument("--public-base", help="base of upload and preview URLs (default: own /uploads)")
    parser.add_argument("--otlp-endpoint", help="trace every request with OpenTelemetry, exported here over OTLP/HTTP")
    args = parser.parse_args(argv)
    public_base = args.public_base or f"http://{args.host}:{args.port}{UPLOADS_PREFIX}"
    app: ASGIApp = create_backend_app(args.delay, public_base)
    if args.otlp_endpoint:
        app = traced(app, args.otlp_endpoint)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        # Longer than the gateway pool's idle expiry, so the gateway, not the upstream, closes
        # idle connections (otherwise a request can race the upstream's close).
        timeout_keep_alive=75,
        # uvicorn would otherwise wait for /forever streams without end on SIGTERM.
        timeout_graceful_shutdown=2,
        lifespan="off",
        log_level="warning",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
