"""The demo backend's ChatKit store: threads and items in memory, each thread its creator's alone.

Ownership is what the gateway's identity is for: `context["userId"]` comes from a verified token,
so a thread id guessed or carried over from another session is simply "not found".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from chatkit.store import NotFoundError, Store
from chatkit.types import Attachment, Page, ThreadItem, ThreadMetadata
from pydantic import BaseModel

__all__ = ["MemoryStore"]

Context = dict[str, Any]
_Record = TypeVar("_Record", bound=BaseModel)


def paginate(
    records: Sequence[_Record], ids: Sequence[str], after: str | None, limit: int, order: str
) -> Page[_Record]:
    """One page of `records` (oldest first, with their `ids`) in `order`, after the id `after`."""
    pairs = list(zip(ids, records, strict=True))
    if order != "asc":
        pairs.reverse()
    start = next((index + 1 for index, (record_id, _) in enumerate(pairs) if record_id == after), 0)
    page = pairs[start : start + limit]
    has_more = start + limit < len(pairs)
    return Page(
        data=[record.model_copy(deep=True) for _, record in page],
        has_more=has_more,
        after=page[-1][0] if has_more and page else None,
    )


class MemoryStore(Store[Context]):
    """Copies in and out, as a database would, so chatkit never holds a stored object."""

    def __init__(self) -> None:
        self.threads: dict[str, ThreadMetadata] = {}
        self.owners: dict[str, str] = {}
        self.items: dict[str, list[ThreadItem]] = {}

    def _owned(self, thread_id: str, context: Context) -> list[ThreadItem]:
        if thread_id not in self.threads or self.owners.get(thread_id) != context["userId"]:
            raise NotFoundError(f"thread {thread_id} not found")
        return self.items[thread_id]

    async def load_thread(self, thread_id: str, context: Context) -> ThreadMetadata:
        self._owned(thread_id, context)
        return self.threads[thread_id].model_copy(deep=True)

    async def save_thread(self, thread: ThreadMetadata, context: Context) -> None:
        if thread.id in self.threads:
            self._owned(thread.id, context)
        self.threads[thread.id] = thread.model_copy(deep=True)
        self.owners.setdefault(thread.id, context["userId"])
        self.items.setdefault(thread.id, [])

    async def load_threads(self, limit: int, after: str | None, order: str, context: Context) -> Page[ThreadMetadata]:
        mine = sorted(
            (thread for thread_id, thread in self.threads.items() if self.owners[thread_id] == context["userId"]),
            key=lambda thread: thread.created_at,
        )
        return paginate(mine, [thread.id for thread in mine], after, limit, order)

    async def delete_thread(self, thread_id: str, context: Context) -> None:
        self._owned(thread_id, context)
        del self.threads[thread_id], self.owners[thread_id], self.items[thread_id]

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: Context
    ) -> Page[ThreadItem]:
        items = self._owned(thread_id, context)
        return paginate(items, [item.id for item in items], after, limit, order)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: Context) -> None:
        self._owned(thread_id, context).append(item.model_copy(deep=True))

    async def save_item(self, thread_id: str, item: ThreadItem, context: Context) -> None:
        items = self._owned(thread_id, context)
        for index, existing in enumerate(items):
            if existing.id == item.id:
                items[index] = item.model_copy(deep=True)
                return
        items.append(item.model_copy(deep=True))

    async def load_item(self, thread_id: str, item_id: str, context: Context) -> ThreadItem:
        for item in self._owned(thread_id, context):
            if item.id == item_id:
                return item.model_copy(deep=True)
        raise NotFoundError(f"item {item_id} not found in {thread_id}")

    async def delete_thread_item(self, thread_id: str, item_id: str, context: Context) -> None:
        items = self._owned(thread_id, context)
        items[:] = [item for item in items if item.id != item_id]

    # The demo's chat takes no attachments.

    async def save_attachment(self, attachment: Attachment, context: Context) -> None:
        raise NotFoundError("the demo does not store attachments")

    async def load_attachment(self, attachment_id: str, context: Context) -> Attachment:
        raise NotFoundError(f"attachment {attachment_id} not found")

    async def delete_attachment(self, attachment_id: str, context: Context) -> None:
        raise NotFoundError(f"attachment {attachment_id} not found")
