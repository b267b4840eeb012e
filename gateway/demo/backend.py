"""The demo's ChatKit backend: a real `ChatKitServer` whose assistant says what it was told.

It is written the way `gateway.backend_sdk` tells backend authors to write one: the ChatKit `context`
comes from `chatkit_context(request, secret=...)`, which accepts only requests whose identity the
gateway signed (`upstream.identity_secret`, random per run) for exactly the body that arrived, so a
signed header copied onto another request is refused. Each answer begins with a
`client_effect` event named `demo.context` carrying that context (without any token), which the
demo page shows, and then streams a reply word by word that names the user, the page and the text.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime

from chatkit.server import ChatKitServer, StreamingResult
from chatkit.store import NotFoundError
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ClientEffectEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    UserMessageTextContent,
)
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..backend_sdk import InvalidIdentity, chatkit_context
from .store import Context, MemoryStore

__all__ = ["CONTEXT_EFFECT", "DemoAssistant", "compose_reply", "create_backend_app"]

CONTEXT_EFFECT = "demo.context"
WORD_DELAY_SECONDS = 0.08
RECEIVED_KEYS = ("userId", "userInfo", "pageContext", "requestId")


def split_words(text: str) -> list[str]:
    """One delta per word, its leading white space kept, so the deltas join back to `text`."""
    return re.findall(r"\s*\S+", text)


def message_text(item: UserMessageItem) -> str:
    return "".join(part.text for part in item.content if isinstance(part, UserMessageTextContent))


def compose_reply(context: Context, text: str) -> str:
    """What the assistant knows: who (from the gateway's verified token), where (the page), what."""
    info = context.get("userInfo") or {}
    name = info.get("name") or context["userId"]
    email = f" ({info['email']})" if info.get("email") else ""
    page = context.get("pageContext") or {}
    if page.get("title") or page.get("path"):
        where = f"You are on page {json.dumps(page.get('title', 'untitled'), ensure_ascii=False)}"
        where += f" ({page['path']})." if page.get("path") else "."
    else:
        where = "I was not told which page you are on."
    said = json.dumps(text, ensure_ascii=False)
    return f"Hello {name}! You are signed in as {context['userId']}{email}. {where} You said: {said}"


class DemoAssistant(ChatKitServer[Context]):
    """Reports the context it received, then streams its reply one word every `word_delay` seconds."""

    def __init__(self, store: MemoryStore, word_delay: float = WORD_DELAY_SECONDS) -> None:
        super().__init__(store)
        self.word_delay = word_delay

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: Context
    ) -> AsyncIterator[ThreadStreamEvent]:
        yield ClientEffectEvent(name=CONTEXT_EFFECT, data={key: context.get(key) for key in RECEIVED_KEYS})
        if input_user_message is None:
            return
        reply = compose_reply(context, message_text(input_user_message))
        async for event in self._stream_message(thread, context, split_words(reply)):
            yield event

    async def _stream_message(
        self, thread: ThreadMetadata, context: Context, deltas: list[str]
    ) -> AsyncIterator[ThreadStreamEvent]:
        """The events chatkit's own `stream_agent_response` produces for one text part."""
        item = AssistantMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[],
        )
        yield ThreadItemAddedEvent(item=item)
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartAdded(content_index=0, content=AssistantMessageContent(text="")),
        )
        for index, delta in enumerate(deltas):
            if index:
                await asyncio.sleep(self.word_delay)
            yield ThreadItemUpdatedEvent(
                item_id=item.id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=delta)
            )
        final = AssistantMessageContent(text="".join(deltas))
        yield ThreadItemUpdatedEvent(
            item_id=item.id, update=AssistantMessageContentPartDone(content_index=0, content=final)
        )
        yield ThreadItemDoneEvent(item=item.model_copy(update={"content": [final]}))


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_backend_app(identity_secret: str, *, word_delay: float = WORD_DELAY_SECONDS) -> Starlette:
    """The backend's HTTP side: `POST /chatkit`, trusting only identities the gateway signed."""
    server = DemoAssistant(MemoryStore(), word_delay)

    async def chatkit_endpoint(request: Request) -> Response:
        try:
            # Reads the body and checks it against the signed hash; `process` then gets the same bytes.
            context = await chatkit_context(request, secret=identity_secret)
        except InvalidIdentity as exc:
            return _error(403, "forbidden", str(exc))
        try:
            result = await server.process(await request.body(), context)
        except ValidationError:
            return _error(400, "invalid_request", "not a ChatKit request")
        except NotFoundError as exc:
            return _error(404, "not_found", str(exc))
        if isinstance(result, StreamingResult):
            return StreamingResponse(result.json_events, media_type="text/event-stream")
        return Response(result.json, media_type="application/json")

    return Starlette(routes=[Route("/chatkit", chatkit_endpoint, methods=["POST"])])
