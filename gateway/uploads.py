"""`POST`/`PUT {server.uploads_path}REST`: attachment uploads, streamed both ways.

ChatKit uploads (direct, or phase two of a two-phase upload) are multipart or raw bodies of up to
`server.max_upload_bytes`. They are never parsed or held whole: the body goes to
`{upstream.uploads_url}REST` as it arrives. REST comes from the request path, so `check_rest` judges
it, segment by segment as the backend will read it, before it is joined to the configured URL
(docs/security.md, "Upload paths").
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import unicodedata
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from starlette.types import Receive, Scope, Send

from .body import ClientDisconnected, declared_length, stream_body
from .errors import GatewayError, InvalidUploadPath, MethodNotAllowed, NotFound, PayloadTooLarge
from .headers import FORWARDED_UPLOAD_HEADERS, Headers, header_value, request_id_from
from .observe import Exchange
from .relay import RelayOutcome, read_answer, relay_response
from .responses import send_error

if TYPE_CHECKING:
    import httpx

    from .runtime import Runtime

__all__ = ["UploadEndpoint", "check_rest", "upload_target"]

logger = logging.getLogger("chatkit_gateway.uploads")

UPLOAD_METHODS = frozenset({"POST", "PUT"})
# An upload's JSON answer (the attachment) is read whole to record its id; it is small.
MAX_ANSWER_BYTES = 1024 * 1024
# RFC 3986 3.3: what a path may hold as it is (pchar and "/"), plus "%" for escapes. Anything else
# (space, controls, a backslash, bytes over 0x7f) is no target a client sends for an upload URL.
RAW_REST = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=:@%/-]+")
MALFORMED_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
DOT_SEGMENTS = frozenset({".", ".."})
# Servlet containers (Tomcat, Jetty) drop a `;parameter` before they resolve dots: `..;/` is `../`.
DOT_SEGMENT_PARAMETERS = ("..;", ".;")
# In a decoded segment: a `/` or `\` (encoded, so it would split the segment on the backend), a `%`
# (double encoding: `%252e` is `.` to a stack that decodes twice), NUL and the other controls.
FORBIDDEN_IN_SEGMENT = re.compile(r"[/\\%\x00-\x1f\x7f-\x9f]")


def check_rest(rest: bytes) -> None:
    """Raise `InvalidUploadPath` unless every segment of REST names something under `uploads_url`.

    RFC 3986 5.2.4 removes `.` and `..` segments when a path is resolved, and servers (nginx, most
    frameworks, any front that normalizes) do it after percent-decoding: `%2e%2e`, `.%2e` and `%2E.`
    are all `..` to them. So each segment is judged as decoded exactly once, which is how the backend
    reads it: a pattern over the raw bytes misses encoded forms (`%2e./` passed one), and decoding
    twice would judge another path than the backend's. A `%` left after one decoding is refused
    rather than trusted, for stacks that do decode twice. Non-ASCII segments are judged in NFKC form
    too, since some backends fold U+FF0E FULLWIDTH FULL STOP or U+2025 TWO DOT LEADER into dots.
    """
    if not RAW_REST.fullmatch(rest) or MALFORMED_ESCAPE.search(rest):
        raise InvalidUploadPath()
    segments = rest.split(b"/")
    if len(segments) > 1 and not segments[-1]:
        segments.pop()  # a trailing slash adds no step
    for raw_segment in segments:
        try:
            segment = unquote_to_bytes(raw_segment).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidUploadPath() from None
        forms = (segment,) if segment.isascii() else (segment, unicodedata.normalize("NFKC", segment))
        for form in forms:
            if (
                not form
                or form in DOT_SEGMENTS
                or form.startswith(DOT_SEGMENT_PARAMETERS)
                or FORBIDDEN_IN_SEGMENT.search(form)
            ):
                raise InvalidUploadPath()


def upload_target(raw_path: bytes, prefix: bytes, base_url: str, query: bytes) -> str:
    """`{base_url}REST?query` for a raw request path under `prefix`, or `InvalidUploadPath`.

    REST goes on as received (still encoded), so the backend decodes the very bytes checked here.
    """
    if not raw_path.startswith(prefix):
        raise InvalidUploadPath()
    rest = raw_path[len(prefix) :]
    check_rest(rest)
    try:
        query_text = query.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidUploadPath() from None
    return base_url + rest.decode("ascii") + (f"?{query_text}" if query_text else "")


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
        except Exception:
            # The app's last resort answers and logs it; the access line still says what happened.
            exchange.status, exchange.error = 500, "internal_error"
            raise

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
        upstream_headers = self.runtime.base_headers(scope, request_id, allow=FORWARDED_UPLOAD_HEADERS)
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
