"""Who may name which thread or attachment: the check before forwarding, and learning from answers.

ChatKit names threads and attachments by id alone, and many backend stores ignore the request's
context, so the gateway keeps its own record of owners (docs/security.md, "Thread and attachment
ownership"):

- before a request is forwarded, every id it names (`params.thread_id` on any op, known or not,
  `params.attachment_id`, each of `params.input.attachments`) must be the user's. Another user's
  id, or under `unknown = "deny"` an id nobody owns, gets `NotOwned` (404), one answer for both;
  under `unknown = "claim"` an id nobody owns is recorded for this user first;
- owners are learned from what the backend answers the user: the `thread.created` event of a
  stream (`stream.py`), the `id` of an `attachments.create` or upload answer; a successful
  `threads.delete` or `attachments.delete` removes the record. Each record is made before the
  answer that carries its id is relayed;
- `threads.list` answers keep in `data` only the user's own threads.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

import orjson

from gateway.chatkit import ChatKitRequest
from gateway.config import OwnershipConfig
from gateway.errors import InvalidChatKitRequest, NotOwned

from .owners import Owners
from .stream import ThreadCreatedWatch

__all__ = ["AnswerPlan", "OwnershipPolicy", "named_ids"]

logger = logging.getLogger("chatkit_gateway.ownership")

# Ops whose answer creates an id: the store must answer before they are forwarded, so a new
# thread or attachment is never made upstream while its owner cannot be recorded.
CREATING_OPS = frozenset({"threads.create", "attachments.create"})
DELETING_OPS = {"threads.delete": "thread_id", "attachments.delete": "attachment_id"}
# ChatKit ids are short ("thr_" + 8 hex); a longer one is a client's mistake or an attempt to fill
# the store, and is refused before it is looked up or recorded.
MAX_ID_CHARS = 512


def _id_at(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidChatKitRequest(f"'{where}' must be a string.")
    if len(value) > MAX_ID_CHARS:
        raise InvalidChatKitRequest(f"'{where}' is too long.")
    return value


def named_ids(params: object) -> list[str]:
    """The thread and attachment ids a request's `params` names (`null` ones left out), or 400."""
    if not isinstance(params, dict):
        return []
    ids = []
    for key in ("thread_id", "attachment_id"):
        item_id = _id_at(params.get(key), f"params.{key}")
        if item_id is not None:
            ids.append(item_id)
    user_input = params.get("input")
    attachments = user_input.get("attachments") if isinstance(user_input, dict) else None
    if isinstance(attachments, list):
        for value in attachments:
            item_id = _id_at(value, "params.input.attachments")
            if item_id is not None:
                ids.append(item_id)
    return ids


class AnswerPlan(NamedTuple):
    """What the answer to one checked request teaches, or must lose, before it is relayed. (A named
    tuple: a frozen dataclass's `__init__` sets each field through `object.__setattr__`.)"""

    user_id: str
    op: str
    deleted_id: str | None = None

    @property
    def reads_answer(self) -> bool:
        """Whether a JSON answer must be read whole first (to record its id, or to filter it)."""
        return self.op in ("attachments.create", "threads.list")


class OwnershipPolicy:
    """The checks and the learning, over one `Owners` made in the lifespan."""

    def __init__(self, config: OwnershipConfig, owners: Owners) -> None:
        self.owners = owners
        self.claim_unknown = config.unknown == "claim"

    async def check(self, user_id: str, request: ChatKitRequest) -> AnswerPlan:
        """Let the request through (the plan for its answer) or raise `NotOwned` (404), 400 or 503."""
        op = request.op
        params = request.body.get("params")
        for item_id in named_ids(params):
            await self._check_one(user_id, item_id)
        if op in CREATING_OPS:
            await self.owners.reach()
        deleted = DELETING_OPS.get(op)
        deleted_id = params.get(deleted) if deleted is not None and isinstance(params, dict) else None
        return AnswerPlan(user_id, op, deleted_id if isinstance(deleted_id, str) else None)

    async def _check_one(self, user_id: str, item_id: str) -> None:
        owner = self.owners.cached(item_id)
        if owner is None:
            if self.claim_unknown:
                # One step: the owner on record, or this user if there was none.
                owner = await self.owners.claim(item_id, user_id)
            else:
                owner = (await self.owners.owners_of((item_id,))).get(item_id)
        if owner != user_id:
            raise NotOwned()

    def stream_watch(self, plan: AnswerPlan) -> ThreadCreatedWatch:
        """Reads a stream's first events and records the thread its `thread.created` names."""
        return ThreadCreatedWatch(lambda thread_id: self.record(plan.user_id, thread_id))

    async def record(self, user_id: str, item_id: str) -> None:
        """Record an id the backend answered the user with, before the answer is relayed.

        `OwnershipUnavailable` when the store fails; `NotOwned` when the id is someone else's already
        (an upload to another user's attachment, or a backend that reuses ids): the answer would
        show the user another user's object."""
        if await self.owners.claim(item_id, user_id) != user_id:
            logger.warning("an answer named an id recorded for another user; it is not relayed")
            raise NotOwned()

    async def answer(self, plan: AnswerPlan, status: int, body: bytes | None) -> bytes | None:
        """The JSON answer as the user may see it: its id recorded, or the list filtered."""
        if not 200 <= status < 300:
            return body
        if plan.deleted_id is not None:
            await self.owners.release(plan.deleted_id, plan.user_id)
        elif body is not None and plan.op == "attachments.create":
            await self.record_answer_id(plan.user_id, body)
        elif body is not None and plan.op == "threads.list":
            return await self.filter_list(plan.user_id, body)
        return body

    async def record_answer_id(self, user_id: str, body: bytes) -> None:
        """Record the `id` of a JSON object answer (an attachment), if it has one."""
        answer = _json(body)
        item_id = answer.get("id") if isinstance(answer, dict) else None
        if isinstance(item_id, str) and item_id and len(item_id) <= MAX_ID_CHARS:
            await self.record(user_id, item_id)

    async def filter_list(self, user_id: str, body: bytes) -> bytes:
        """A `threads.list` page with only the user's threads in `data`; anything else unchanged.

        Listing never claims: a thread nobody owns yet appears in nobody's list."""
        page = _json(body)
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            return body
        threads: list[Any] = page["data"]
        ids = [_thread_id(thread) for thread in threads]
        owners = await self.owners.owners_of([item_id for item_id in ids if item_id], for_listing=True)
        keep = [owners.get(item_id) == user_id for item_id in ids]
        if all(keep):
            return body  # the backend's bytes, as they came
        # Written back from the page as `json` reads it: `orjson` would turn an integer beyond 64
        # bits into a float. The two agree on the structure and the strings (see `_json`).
        exact = _exact_json(body)
        if isinstance(exact, dict) and isinstance(exact.get("data"), list) and len(exact["data"]) == len(keep):
            page = exact
        page["data"] = [thread for thread, kept in zip(page["data"], keep, strict=True) if kept]
        try:
            return json.dumps(page, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate escape (`"\ud800"`) has no UTF-8 form: written back escaped, as it came.
            return json.dumps(page, separators=(",", ":")).encode("ascii")


def _thread_id(thread: object) -> str:
    """A listed thread's id, or "" (an entry without one belongs to nobody)."""
    item_id = thread.get("id") if isinstance(thread, dict) else None
    return item_id if isinstance(item_id, str) else ""


def _json(body: bytes) -> object:
    """A JSON answer read for its structure and ids (None if it is not JSON): by `orjson`, several
    times faster than `json` on every listed page (docs/BENCHMARKS.md, "Measured design choices"),
    and by `json` whatever `orjson` refuses (a BOM, UTF-16, NaN, a number beyond a double, a lone
    surrogate, deep nesting), so an answer is never read as less than `json` reads it. Where both
    read a document they agree on its objects, arrays and strings (the last of duplicate members
    wins in both); only numbers may differ, which no decision here looks at."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _exact_json(body)


def _exact_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None
