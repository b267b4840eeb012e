"""One small backend, served by every server the gateway meets in the field, for the conformance suite.

The same four routes in each server's own idiom (ASGI for uvicorn, hypercorn, granian and daphne;
aiohttp; WSGI for `wsgiref`; Node's `http` in `interop.js`; nginx in front of uvicorn):

- `GET /ready`: 200, for start-up;
- `POST /json` (and `/chatkit`): reads the body, answers `{"received": N}` with a `Content-Length`;
- `POST /sse`: reads the body, answers three SSE events, one write each;
- `POST /sse-gzip`: the same events gzip-compressed, labelled `Content-Encoding: gzip`;
- `PUT /upload-refused`: answers 413 at once, without reading the (large) body.

    python -m tests.support.interop {aiohttp|wsgiref} PORT
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

EVENTS = [b'data: {"type":"progress_update","text":"%d"}\n\n' % i for i in range(3)]
GZIP_EVENTS = gzip.compress(b"".join(EVENTS), mtime=0)
REFUSED = b'{"error":"too large"}'
JSON = (b"content-type", b"application/json")
SSE = (b"content-type", b"text/event-stream")


def json_answer(received: int) -> bytes:
    return json.dumps({"received": received}).encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI version."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]

    async def start(status: int, *headers: tuple[bytes, bytes]) -> None:
        await send({"type": "http.response.start", "status": status, "headers": list(headers)})

    if path == "/upload-refused":
        await start(413, JSON, (b"content-length", b"%d" % len(REFUSED)), (b"connection", b"close"))
        await send({"type": "http.response.body", "body": REFUSED})
        return
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if path in ("/json", "/ready", "/chatkit"):
        body = json_answer(received)
        await start(200, JSON, (b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.body", "body": body})
    elif path == "/sse":
        await start(200, SSE, (b"cache-control", b"no-cache"))
        for event in EVENTS:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/sse-gzip":
        await start(200, SSE, (b"content-encoding", b"gzip"))
        await send({"type": "http.response.body", "body": GZIP_EVENTS[:10], "more_body": True})
        await send({"type": "http.response.body", "body": GZIP_EVENTS[10:]})
    else:
        await start(404, (b"content-length", b"0"))
        await send({"type": "http.response.body", "body": b""})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The WSGI version: answers without a length are close-delimited under `wsgiref` (HTTP/1.0)."""
    path = environ["PATH_INFO"]
    if path == "/upload-refused":
        start_response("413 Payload Too Large", [("Content-Type", "application/json")])
        return [REFUSED]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    received = len(environ["wsgi.input"].read(length)) if length else 0
    if path in ("/json", "/ready"):
        start_response("200 OK", [("Content-Type", "application/json")])
        return _pieces(json_answer(received))
    if path == "/sse":
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return iter(EVENTS)
    if path == "/sse-gzip":
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Content-Encoding", "gzip")])
        return _pieces(GZIP_EVENTS)
    start_response("404 Not Found", [])
    return []


def _pieces(body: bytes) -> Iterator[bytes]:
    # Two pieces: `wsgiref` sets a Content-Length only for a one-piece answer.
    yield body[:5]
    yield body[5:]


def run_aiohttp(port: int) -> None:
    from aiohttp import web

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/upload-refused":
            return web.Response(status=413, body=REFUSED, content_type="application/json")
        received = len(await request.read())
        if request.path in ("/json", "/ready"):
            return web.Response(body=json_answer(received), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if request.path == "/sse-gzip":
            response.headers["Content-Encoding"] = "gzip"
            await response.prepare(request)
            await response.write(GZIP_EVENTS)
            return response
        await response.prepare(request)
        for event in EVENTS:
            await response.write(event)
        return response

    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(application, host="127.0.0.1", port=port, print=None, access_log=None)


def run_wsgiref(port: int) -> None:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    make_server("127.0.0.1", port, wsgi_app, handler_class=Quiet).serve_forever()


if __name__ == "__main__":
    kind, port_text = sys.argv[1], sys.argv[2]
    {"aiohttp": run_aiohttp, "wsgiref": run_wsgiref}[kind](int(port_text))
