"""A ChatKit backend behind chatkit-gateway: it greets the user by name, keeps each user's threads
apart, and hands each tool server the token the gateway made for that server (`[[tokens.resources]]`
name "crm") in the MCP client's HTTP headers, never to the model, a log or `metadata`.

    CHATKIT_IDENTITY_SECRET=<upstream.identity_secret> uvicorn app:app --app-dir examples/backend --port 8001

With the secret, it believes only identities the gateway signed for exactly the body that arrived
(a signed header copied onto another request is refused). Without `CHATKIT_IDENTITY_SECRET` it
runs in "trusted network" mode and believes the body's metadata when `X-User-Id` and
`X-User-Email` agree with it: only do that when nothing but the gateway can reach it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from chatkit import types as ck
from chatkit.server import ChatKitServer, StreamingResult
from chatkit.store import NotFoundError, Store
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.backend_sdk import InvalidIdentity, chatkit_context, tool_token

Context = dict[str, Any]  # what gateway.backend_sdk.chatkit_context returns, plus this request's "tools"
# An MCP server that accepts only tokens whose `aud` is its own URI, checked against the gateway's
# JWKS (`{tokens.issuer}/.well-known/jwks.json`); the gateway's `[[tokens.resources]]` entry
# `name = "crm"` has that URI as its `audience`.
CRM_MCP_URL = "http://127.0.0.1:8002/mcp"

_Record = TypeVar("_Record", bound=BaseModel)


# ------------------------------------------------------------------------------------------ store


@dataclass
class UserSpace:
    threads: dict[str, ck.ThreadMetadata] = field(default_factory=dict)
    items: dict[str, list[ck.ThreadItem]] = field(default_factory=dict)
    attachments: dict[str, ck.Attachment] = field(default_factory=dict)


def page_of(records: Sequence[_Record], after: str | None, limit: int, order: str) -> ck.Page[_Record]:
    ordered = list(records) if order == "asc" else list(reversed(records))
    ids = [getattr(record, "id") for record in ordered]  # noqa: B009 - threads and items share no base
    start = ids.index(after) + 1 if after in ids else 0
    page = ordered[start : start + limit]
    has_more = start + limit < len(ordered)
    return ck.Page(data=page, has_more=has_more, after=ids[start + len(page) - 1] if has_more and page else None)


class MemoryStore(Store[Context]):
    """In memory, one space per user: the gateway's `userId` decides whose threads a request sees."""

    def __init__(self) -> None:
        self.users: dict[str, UserSpace] = {}

    def space(self, context: Context) -> UserSpace:
        return self.users.setdefault(context["userId"], UserSpace())

    async def load_thread(self, thread_id: str, context: Context) -> ck.ThreadMetadata:
        if thread_id not in self.space(context).threads:
            raise NotFoundError(f"thread {thread_id} not found")  # another user's thread included
        return self.space(context).threads[thread_id]

    async def save_thread(self, thread: ck.ThreadMetadata, context: Context) -> None:
        self.space(context).threads[thread.id] = thread

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: Context
    ) -> ck.Page[ck.ThreadMetadata]:
        return page_of(list(self.space(context).threads.values()), after, limit, order)

    async def delete_thread(self, thread_id: str, context: Context) -> None:
        self.space(context).threads.pop(thread_id, None)
        self.space(context).items.pop(thread_id, None)

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: Context
    ) -> ck.Page[ck.ThreadItem]:
        return page_of(self.space(context).items.get(thread_id, []), after, limit, order)

    async def add_thread_item(self, thread_id: str, item: ck.ThreadItem, context: Context) -> None:
        self.space(context).items.setdefault(thread_id, []).append(item)

    async def save_item(self, thread_id: str, item: ck.ThreadItem, context: Context) -> None:
        items = self.space(context).items.setdefault(thread_id, [])
        for index, existing in enumerate(items):
            if existing.id == item.id:
                items[index] = item
                return
        items.append(item)

    async def load_item(self, thread_id: str, item_id: str, context: Context) -> ck.ThreadItem:
        for item in self.space(context).items.get(thread_id, []):
            if item.id == item_id:
                return item
        raise NotFoundError(f"item {item_id} not found")

    async def delete_thread_item(self, thread_id: str, item_id: str, context: Context) -> None:
        items = self.space(context).items.get(thread_id, [])
        items[:] = [item for item in items if item.id != item_id]

    async def save_attachment(self, attachment: ck.Attachment, context: Context) -> None:
        self.space(context).attachments[attachment.id] = attachment

    async def load_attachment(self, attachment_id: str, context: Context) -> ck.Attachment:
        if attachment_id not in self.space(context).attachments:
            raise NotFoundError(f"attachment {attachment_id} not found")
        return self.space(context).attachments[attachment_id]

    async def delete_attachment(self, attachment_id: str, context: Context) -> None:
        self.space(context).attachments.pop(attachment_id, None)


# ------------------------------------------------------------------------------------------ model


@dataclass
class ToolServer:
    """An MCP server as an agent is given one: its URL and the HTTP headers of every call to it."""

    url: str
    headers: dict[str, str]


@dataclass
class ModelCall:
    instructions: str
    user_text: str
    tools: list[ToolServer]


@dataclass
class OfflineModel:
    """Stands in for the LLM so that the example runs without an API key; records what it was given."""

    calls: list[ModelCall] = field(default_factory=list)

    async def reply(self, instructions: str, user_text: str, tools: list[ToolServer]) -> str:
        self.calls.append(ModelCall(instructions, user_text, tools))
        return f"You said: {user_text}"


def display_name(context: Context) -> str:
    name = context["userInfo"].get("name")
    return name if isinstance(name, str) and name else str(context["userId"])


def instructions_for(context: Context) -> str:
    """What the model reads: the user's name and page, never a credential (a model can repeat it)."""
    lines = [f"You are a helpful assistant. The user is {display_name(context)}."]
    page = context["pageContext"] or {}
    if page.get("title") or page.get("url"):
        # The page context is sanitised by the gateway but still chosen by the browser: data, not orders.
        lines.append(f"They are reading (as their browser reports it): {page.get('title', '')} {page.get('url', '')}")
    return "\n".join(lines)


class GreetingServer(ChatKitServer[Context]):
    def __init__(self, store: MemoryStore, model: OfflineModel) -> None:
        super().__init__(store)
        self.model = model

    async def respond(
        self, thread: ck.ThreadMetadata, input_user_message: ck.UserMessageItem | None, context: Context
    ) -> AsyncIterator[ck.ThreadStreamEvent]:
        text = ""
        if input_user_message is not None:
            text = "".join(c.text for c in input_user_message.content if isinstance(c, ck.UserMessageTextContent))
        # The tool token travels in the tool's HTTP headers only. With the OpenAI Agents SDK:
        #
        #   crm = context["tools"][0]
        #   async with MCPServerStreamableHttp(params={"url": crm.url, "headers": crm.headers}) as mcp:
        #       agent = Agent(name="Assistant", instructions=instructions_for(context), mcp_servers=[mcp])
        #       agent_context = AgentContext(thread=thread, store=self.store, request_context=context)
        #       result = Runner.run_streamed(agent, await simple_to_agent_input(input_user_message),
        #                                    context=agent_context)
        #       async for event in stream_agent_response(agent_context, result):
        #           yield event
        answer = await self.model.reply(instructions_for(context), text, context["tools"])
        item = ck.AssistantMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[ck.AssistantMessageContent(text=f"Hello, {display_name(context)}! {answer}")],
        )
        yield ck.ThreadItemDoneEvent(item=item)


# ------------------------------------------------------------------------------------------- HTTP


def tool_servers(request: Request) -> list[ToolServer]:
    """The tool servers this request may call, each with the token the gateway made for it alone.

    The tool token is for the crm server only (its `aud`), lives minutes, and names the user: it goes
    to that server as `Authorization: Bearer` and nowhere else. (`gateway.backend_sdk.mcp_headers`
    hands a tool the user's own token instead: the weaker option, see docs/tokens.md.)"""
    token = tool_token(request, "crm")
    return [ToolServer(url=CRM_MCP_URL, headers={"Authorization": f"Bearer {token}"})] if token else []


def create_app(secret: str | None, model: OfflineModel | None = None) -> Starlette:
    server = GreetingServer(MemoryStore(), model or OfflineModel())

    async def chatkit_endpoint(request: Request) -> Response:
        try:
            # Reads the body and checks it against the signed hash; `process` below gets the same bytes.
            # "tools" lives as long as this request: never stored, never shown to the model.
            context = {**await chatkit_context(request, secret=secret), "tools": tool_servers(request)}
        except InvalidIdentity:
            # Not the gateway's word (or not any more): refuse without saying what was wrong.
            return JSONResponse({"error": {"code": "forbidden", "message": "Unverified identity."}}, status_code=403)
        try:
            result = await server.process(await request.body(), context)
        except ValidationError:
            return JSONResponse({"error": {"code": "invalid_request", "message": "Not a ChatKit request."}}, 400)
        if isinstance(result, StreamingResult):
            return StreamingResponse(result, media_type="text/event-stream")
        return Response(result.json, media_type="application/json")

    return Starlette(routes=[Route("/chatkit", chatkit_endpoint, methods=["POST"])])


app = create_app(os.environ.get("CHATKIT_IDENTITY_SECRET") or None)
