"""The same request through the gateway's transport and through httpx's default one (httpcore).

`compare(method, url, body)` runs it through both on one event loop (uvloop, as the gateway
serves) and returns both `Seen`s: the status, the headers as received (`date` aside), the raw
body bytes (not decoded), or the name of the httpx error that ended the exchange.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import uvloop

from gateway.transport import HTTP11Transport

__all__ = ["Body", "Seen", "compare", "streamed"]

Body = bytes | None | int  # an int: that many bytes, streamed in 64 KiB pieces (chunked)
TIMEOUT = httpx.Timeout(5.0)


@dataclass(frozen=True)
class Seen:
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    error: str | None = None

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


async def streamed(size: int) -> AsyncIterator[bytes]:
    piece = b"x" * 65536
    for start in range(0, size, len(piece)):
        yield piece[: min(len(piece), size - start)]


async def _fetch(client: httpx.AsyncClient, method: str, url: str, body: Body) -> Seen:
    content = streamed(body) if isinstance(body, int) else body
    try:
        async with client.stream(method, url, content=content) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            headers = tuple((k.decode().lower(), v.decode()) for k, v in response.headers.raw if k.lower() != b"date")
            return Seen(response.status_code, headers, raw)
    except httpx.HTTPError as exc:
        return Seen(error=type(exc).__name__)


def compare(method: str, url: str, body: Body = None) -> tuple[Seen, Seen]:
    """(the gateway's transport, httpcore) on the same request."""

    async def both() -> tuple[Seen, Seen]:
        ours = httpx.AsyncClient(transport=HTTP11Transport(), trust_env=False, timeout=TIMEOUT)
        theirs = httpx.AsyncClient(trust_env=False, timeout=TIMEOUT)
        async with ours, theirs:
            return await _fetch(ours, method, url, body), await _fetch(theirs, method, url, body)

    return uvloop.run(both())
