"""The ChatKit request as the gateway understands it: checked once, parsed once.

A ChatKit request is a JSON object `{"type": "<op>", "params": {...}, "metadata": {...}}` POSTed to
one endpoint. The gateway does not validate `params` (the backend does, and new ops appear between
releases); it checks what it relies on: an object, a string `type`, and JSON that every later step
(rewrite, re-serialisation) can handle without surprise. The op lists below are those of
openai-chatkit 1.6.5; whether a response streams is decided by its `Content-Type`, not by this list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidChatKitRequest, InvalidJSON, UnsupportedMediaType
from .headers import header_value
from .jsondepth import nesting_exceeds

__all__ = [
    "GATEWAY_METADATA_KEYS",
    "NON_STREAMING_TYPES",
    "READ_ONLY_TYPES",
    "STREAMING_TYPES",
    "ChatKitRequest",
    "parse_chatkit_request",
    "rewrite_body",
    "require_json_content_type",
]

SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB]")
# Levels of nesting a body may have (the top-level object is level 1). ChatKit bodies nest well
# under 20; parsing, the lone-surrogate check and re-serialising all recurse once per level.
MAX_JSON_DEPTH = 256
STREAMING_TYPES = frozenset(
    {
        "threads.create",
        "threads.add_user_message",
        "threads.add_client_tool_output",
        "threads.add_structured_input",
        "threads.retry_after_item",
        "threads.custom_action",
    }
)
NON_STREAMING_TYPES = frozenset(
    {
        "threads.get_by_id",
        "threads.list",
        "items.list",
        "items.feedback",
        "attachments.create",
        "attachments.delete",
        "threads.update",
        "threads.delete",
        "input.transcribe",
        "threads.sync_custom_action",
    }
)

# Ops that only read: sending one twice changes nothing (see the keep-alive race in transport.py).
READ_ONLY_TYPES = frozenset({"threads.get_by_id", "threads.list", "items.list"})


@dataclass(frozen=True, slots=True)
class ChatKitRequest:
    op: str
    body: dict[str, Any]

    @property
    def streaming(self) -> bool:
        """Whether the op produces messages (a stream). Unknown ops are treated as streaming."""
        return self.op not in NON_STREAMING_TYPES

    @property
    def read_only(self) -> bool:
        return self.op in READ_ONLY_TYPES


def require_json_content_type(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """`application/json` (any parameters, e.g. charset) or 415."""
    value = header_value(headers, b"content-type")
    if value is None or value.split(b";", 1)[0].strip().lower() != b"application/json":
        raise UnsupportedMediaType()


def _reject_constant(name: str) -> Any:
    raise InvalidJSON("The request body contains NaN or Infinity, which JSON does not allow.")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate members are resolved differently by different parsers (RFC 8259 4); a body whose
    # `metadata` the gateway and the backend would read differently must not pass.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise InvalidJSON("The request body has a duplicate member.")
    return result


def _has_lone_surrogate(value: Any) -> bool:
    # Python's json accepts "\\ud800" and yields a str that cannot be encoded again; the backend's
    # parser would reject or mangle it, so the gateway refuses it up front.
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_chatkit_request(raw: bytes) -> ChatKitRequest:
    """Parse and check a ChatKit body; `InvalidJSON` or `InvalidChatKitRequest` (both 400) otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("The request body is not valid UTF-8.") from None
    if nesting_exceeds(text, MAX_JSON_DEPTH):
        raise InvalidJSON("The request body is nested too deeply.")
    try:
        body = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_object_without_duplicates)
    except InvalidJSON:
        raise
    except RecursionError:
        raise InvalidJSON("The request body is nested too deeply.") from None
    except ValueError:
        # json.JSONDecodeError, and Python's 4,300-digit integer limit.
        raise InvalidJSON() from None
    if SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(body):
        raise InvalidJSON("The request body contains a lone surrogate, which is not valid Unicode.")
    if not isinstance(body, dict):
        raise InvalidChatKitRequest("The request body must be a JSON object.")
    op = body.get("type")
    if not isinstance(op, str) or not op:
        raise InvalidChatKitRequest("The request body must have a string 'type'.")
    return ChatKitRequest(op=op, body=body)


GATEWAY_METADATA_KEYS = ("userId", "userInfo", "pageContext", "requestId")


def rewrite_body(request: ChatKitRequest, injected: Mapping[str, Any]) -> bytes:
    """The body with the gateway's keys written into its top-level `metadata`.

    `metadata` becomes an object (`null`, absent or not an object: `{}`); the client's copies of the
    gateway's keys are removed and `injected` written in their place. Every other member, in
    `metadata` and around it, passes unchanged and in order; unicode is kept as sent.
    """
    body = request.body
    client_metadata = body.get("metadata")
    metadata = {
        key: value
        for key, value in (client_metadata.items() if isinstance(client_metadata, dict) else ())
        if key not in GATEWAY_METADATA_KEYS
    }
    metadata.update(injected)
    body["metadata"] = metadata  # an existing member keeps its place; a new one goes last
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (ValueError, RecursionError):
        # Parsing already refused what cannot be written back; this is the last guard.
        raise InvalidJSON() from None
