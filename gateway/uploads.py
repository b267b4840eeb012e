"""`POST`/`PUT {server.uploads_path}REST`: attachment uploads, streamed both ways.

ChatKit uploads (direct, or phase two of a two-phase upload) are multipart or raw bodies of up to
`server.max_upload_bytes`. They are never parsed or held whole: the body goes to
`{upstream.uploads_url}REST` as it arrives. REST comes from the request path, so `check_rest` judges
it, segment by segment as the backend will read it, before it is joined to the configured URL
(docs/security.md, "Upload paths").
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import httpx
from starlette.types import Receive, Scope, Send

from .body import declared_length, stream_body
from .endpoint import Endpoint
from .errors import InvalidUploadPath, MethodNotAllowed, NotFound, PayloadTooLarge
from .observe import Exchange
from .relay import RelayOutcome, relay_response
from .upstream import read_answer

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


class UploadEndpoint(Endpoint):
    route = "uploads"
    op = "upload"

    def __init__(self, runtime: Runtime) -> None:
        uploads_path = runtime.config.server.uploads_path
        super().__init__(runtime.observer, tracing=runtime.tracing, http_route=uploads_path + "{path}")
        self.runtime = runtime
        self.config = runtime.config
        self.prefix = uploads_path.encode("ascii")

    async def handle(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        if scope["method"] not in UPLOAD_METHODS:
            raise MethodNotAllowed(headers={"Allow": "POST, PUT, OPTIONS"})
        base_url = self.config.upstream.uploads_url
        if base_url is None:
            raise NotFound("Uploads are not configured on this gateway.")
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        target = upload_target(raw_path, self.prefix, base_url, scope.get("query_string", b""))
        runtime = self.runtime
        principal, identity = await runtime.authenticate(scope["headers"], exchange.trace)
        exchange.user_id, exchange.source = identity.user_id, principal.source
        if exchange.trace is not None:
            exchange.trace.identify("upload", identity.user_id, None)
        await runtime.limiter.admit(identity.user_id, message=False)
        if runtime.ownership is not None:
            # A direct upload creates an attachment: its owner must be recordable first.
            await runtime.ownership.owners.reach()
        limit = self.config.server.max_upload_bytes
        declared = declared_length(scope["headers"])
        if declared is not None and declared > limit:
            raise PayloadTooLarge()
        request_id = exchange.request_id
        headers = runtime.outbound.upload_headers(scope, request_id, principal, identity, declared)
        if exchange.trace is not None:
            url = httpx.URL(target)
            headers.extend(exchange.trace.upstream_headers(scope["method"], url.host, url.port or 80, str(url)))
        if runtime.tokens is not None:
            headers += runtime.tokens.upload_headers(principal, identity, request_id)  # the assertion
        body = stream_body(receive, limit, self.config.server.body_timeout_seconds)
        outcome = RelayOutcome()
        try:
            async with runtime.streams:
                response = await runtime.upstream.send_stream(target, headers, body, method=scope["method"])
                answer = await self._record_attachment(response, identity.user_id)
                await relay_response(
                    response,
                    send,
                    receive,
                    body=answer,
                    extra_headers=[(b"x-request-id", request_id.encode())],
                    outcome=outcome,
                )
        finally:
            if outcome.status:  # the backend answered: the relay saw what the log line reports
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
