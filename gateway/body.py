"""Reading request bodies from ASGI `receive`, bounded as they arrive.

uvicorn sets no body limit, so the bound is enforced here while reading: a declared
`Content-Length` over the limit is refused before any byte is read, and a chunked body is counted
as it comes, so neither reaches memory or the upstream whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from starlette.types import Receive

from .errors import BadRequest, PayloadTooLarge, RequestTimeout
from .headers import header_value

__all__ = ["BodyInHand", "ClientDisconnected", "declared_length", "read_body", "stream_body"]


class ClientDisconnected(Exception):
    """The client went away; there is nobody left to answer."""


def declared_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    value = header_value(headers, b"content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise BadRequest("The Content-Length header is malformed.")
    return int(value)


class BodyInHand(Protocol):
    """A server's request cycle that can hand over a body that has all arrived (`protocol.py`)."""

    def body_in_hand(self) -> bytes | None: ...


async def read_body(
    receive: Receive,
    headers: Sequence[tuple[bytes, bytes]],
    limit: int,
    timeout: float = 30.0,
    cycle: BodyInHand | None = None,
) -> bytes:
    """The whole body, or `PayloadTooLarge` as soon as it is known to exceed `limit`, or
    `RequestTimeout` if it has not all arrived within `timeout` (a slow trickle holds a task).

    `cycle`: the server's cycle of this request, when it offers one; a body that has all arrived
    (nearly always: it comes with its headers) is taken from it without waiting."""
    declared = declared_length(headers)
    if declared is not None and declared > limit:
        raise PayloadTooLarge()
    if cycle is not None:
        body = cycle.body_in_hand()
        if body is not None:
            if len(body) > limit:
                raise PayloadTooLarge()
            return body
    # What `asyncio.timeout` does, without its context manager's Python layers: one timer that
    # cancels this task, told apart from any other cancellation by `expired` (a few us off every
    # request, whose body has nearly always arrived with its headers: docs/performance.md).
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await _read_all(receive, limit)
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:
            raise RequestTimeout() from None
        raise
    finally:
        timer.cancel()


async def _read_all(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge()
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def stream_body(receive: Receive, limit: int, idle_timeout: float = 30.0) -> AsyncIterator[bytes]:
    """The body chunk by chunk, for uploads that must never be held whole; a pause longer than
    `idle_timeout` between chunks is `RequestTimeout`."""
    total = 0
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout() from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge()
            yield chunk
        if not message.get("more_body", False):
            return
