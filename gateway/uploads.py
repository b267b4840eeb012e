"""`POST`/`PUT {server.uploads_path}REST`: attachment uploads, streamed both ways.

ChatKit uploads (direct, or phase two of a two-phase upload) are multipart or raw bodies of up to
`server.max_upload_bytes`. They are never parsed or held whole: the body goes to
`{upstream.uploads_url}REST` as it arrives. REST comes from the request path, so it is checked
before it is joined to the configured URL: no dot segments, no empty segments, no backslashes, no
encoded slashes or NULs (any of which could move the request elsewhere on the backend).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from .body import ClientDisconnected, declared_length, stream_body
from .errors import GatewayError, InvalidUploadPath, MethodNotAllowed, NotFound, PayloadTooLarge
from .headers import Headers, header_value, request_id_from
from .observe import Exchange
from .relay import RelayOutcome, read_answer, relay_response
from .responses import send_error

if TYPE_CHECKING:
    import httpx

    from .runtime import Runtime

__all__ = ["UploadEndpoint", "upload_target"]

logger = logging.getLogger("chatkit_gateway.uploads")

UPLOAD_METHODS = frozenset({"POST", "PUT"})
# Checked on the raw (still percent-encoded) path: `%2e%2e`, `%2f`, `%5c` and `%00` are the
# encoded forms of the dot segment, slash, backslash and NUL that the plain checks look for.
# An upload's JSON answer (the attachment) is read whole to record its id; it is small.
MAX_ANSWER_BYTES = 1024 * 1024
FORBIDDEN_IN_REST = re.compile(rb"(^|/)\.\.?(/|$)|//|\\|%2e%2e|%2f|%5c|%00|%2e(/|$)|[\x00-\x20\x7f]", re.IGNORECASE)


def upload_target(raw_path: bytes, prefix: bytes, base_url: str, query: bytes) -> str:
    """`{base_url}REST?query` for a raw request path under `prefix`, or `InvalidUploadPath`."""
    if not raw_path.startswith(prefix):
        raise InvalidUploadPath()
    rest = raw_path[len(prefix) :]
    if not rest or rest.startswith(b"/") or FORBIDDEN_IN_REST.search(rest):
        raise InvalidUploadPath()
    try:
        rest_text = rest.decode("ascii")
        query_text = query.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidUploadPath() from None
    return base_url + rest_text + (f"?{query_text}" if query_text else "")


class UploadEndpoint:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.prefix = self.config.server.uploads_path.encode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = scope["headers"]
        request_id = request_id_from(headers)
        exchange = Exchange(request_id, "uploads", time.monotonic(), scope["method"], op="upload")
        try:
            await self._handle(scope, receive, send, headers, exchange)
        finally:
            self.runtime.observer.finish(exchange)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, headers: Headers, exchange: Exchange) -> None:
        request_id = exchange.request_id
        try:
            if scope["method"] not in UPLOAD_METHODS:
                raise MethodNotAllowed(headers={"Allow": "POST, PUT, OPTIONS"})
            base_url = self.config.upstream.uploads_url
            if base_url is None:
                raise NotFound("Uploads are not configured on this gateway.")
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
            target = upload_target(raw_path, self.prefix, base_url, scope.get("query_string", b""))
            principal, identity = await self.runtime.authenticate(headers)
            exchange.user_id, exchange.source = identity.user_id, principal.source
            await self.runtime.limiter_or_fail().admit(identity.user_id, message=False)
            if self.runtime.ownership is not None:
                # A direct upload creates an attachment: its owner must be recordable first.
                await self.runtime.ownership.owners.reach()
            identity_headers = self.runtime.identity_headers(principal, identity, request_id)
            await self._forward(scope, receive, send, target, exchange, identity_headers, identity.user_id)
        except GatewayError as error:
            exchange.status, exchange.error = error.status, error.code
            with contextlib.suppress(RuntimeError):
                await send_error(send, error, request_id)
        except ClientDisconnected:
            exchange.client_disconnected = True
            return

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: str,
        exchange: Exchange,
        identity: Headers,
        user_id: str,
    ) -> None:
        request_id = exchange.request_id
        limit = self.config.server.max_upload_bytes
        headers: Headers = scope["headers"]
        declared = declared_length(headers)
        if declared is not None and declared > limit:
            raise PayloadTooLarge()
        upstream_headers = self.runtime.base_headers(scope, request_id)
        upstream_headers.extend(identity)
        if declared is not None:
            upstream_headers.append((b"content-length", str(declared).encode("ascii")))
        if header_value(upstream_headers, b"content-type") is None:
            upstream_headers.append((b"content-type", b"application/octet-stream"))
        upstream = self.runtime.upstream_or_fail()
        response = await upstream.send_stream(
            target,
            upstream_headers,
            stream_body(receive, limit, self.config.server.body_timeout_seconds),
            method=scope["method"],
        )
        outcome = RelayOutcome()
        try:
            body = await self._record_attachment(response, user_id)
            await relay_response(
                response,
                send,
                receive,
                body=body,
                extra_headers=[(b"x-request-id", request_id.encode())],
                outcome=outcome,
            )
        finally:
            upstream.release_stream()
            exchange.bytes_in = declared or 0
            exchange.record(outcome)

    async def _record_attachment(self, response: httpx.Response, user_id: str) -> bytes | None:
        """A successful JSON answer naming an attachment `id` (a direct upload): the id recorded for
        the user before the answer is relayed, and the body read for that; otherwise None (streamed)."""
        ownership = self.runtime.ownership
        content_type = response.headers.get("content-type", "")
        if ownership is None or not 200 <= response.status_code < 300 or "json" not in content_type.lower():
            return None
        body = await read_answer(response, MAX_ANSWER_BYTES)
        await ownership.record_answer_id(user_id, body)
        response.headers["content-length"] = str(len(body))
        return body
