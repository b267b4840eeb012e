"""A fast ChatKit-shaped upstream for benchmarks: raw ASGI under uvicorn (uvloop + httptools).

`POST /chatkit` with a ChatKit-shaped body:
- `threads.list` (any non-streaming op): a small JSON answer;
- `threads.create` with `params.events` = n and `params.interval_ms` = ms: an SSE stream of n
  events, each carrying `time.monotonic_ns()` taken just before it is sent, so a client on the
  same machine can measure per-event latency;
- `threads.create` with `params.idle` = true: one event (`thread.created`, a new thread id each
  time), then silence until the client leaves.

Run: `python -m bench.upstream --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from typing import Any

import uvicorn

SMALL_JSON = json.dumps(
    {"data": [{"id": "thr_bench", "title": "bench", "items": {"data": [], "has_more": False}}], "has_more": False}
).encode()
JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(SMALL_JSON)).encode())]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]


async def _read(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = json.loads(await _read(receive) or b"{}")
    params = body.get("params") or {}
    if body.get("type") != "threads.create":
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": SMALL_JSON})
        return
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    if params.get("idle"):
        # A new thread, as openai-chatkit opens a `threads.create` stream: the gateway records its owner.
        thread = f'{{"id":"thr_{secrets.token_hex(8)}","title":null,"created_at":"2025-01-01T00:00:00Z"}}'
        event = f'data: {{"type":"thread.created","thread":{thread}}}\n\n'.encode()
        await send({"type": "http.response.body", "body": event, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    interval = float(params.get("interval_ms", 10)) / 1000
    pad = "x" * int(params.get("pad", 100))
    for n in range(int(params.get("events", 10))):
        frame = f'data: {{"type":"thread.item.updated","n":{n},"t":{time.monotonic_ns()},"pad":"{pad}"}}\n\n'
        await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})
        await asyncio.sleep(interval)
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        timeout_keep_alive=75,
        access_log=False,
        backlog=8192,
    )


if __name__ == "__main__":
    main()
