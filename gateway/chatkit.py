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
from typing import Any, NamedTuple

import orjson

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


class ChatKitRequest(NamedTuple):
    op: str
    body: dict[str, Any]
    # Parsed by orjson (below): every number in `body` is one orjson writes back as it was read.
    plain: bool = False

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


# Made once: `json.loads` and `json.dumps` given any option build a new decoder or encoder per call
# (measured: ~2 % of a request's CPU, docs/performance.md).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object_without_duplicates)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# The end of an object member's name: a closing quote, whitespace, a colon. Every member of a JSON
# text ends so; inside a string only an escaped quote can start a match, so the count is never
# below the text's members (a count above them only sends the body to the exact parser).
_MEMBER_NAME_END = re.compile(rb'"[ \t\n\r]*:')
# A member's name with whitespace before its colon: without one in the text, every member's name
# ends in `":`, and counting that pair (much cheaper than the pattern above) is enough.
_SPACED_NAME_END = re.compile(rb'"[ \t\n\r]+:')
# orjson reads an integer beyond 64 bits as a float (rounded), `json` exactly: a float this large
# may have been one.
_LARGE = 2.0**63


def parse_chatkit_request(raw: bytes) -> ChatKitRequest:
    """Parse and check a ChatKit body; `InvalidJSON` or `InvalidChatKitRequest` (both 400) otherwise.

    orjson reads a body first (a few times faster than `json`, with the checks below). It refuses
    more than `json` does (NaN and Infinity, numbers beyond a double, lone surrogates, invalid
    UTF-8, a BOM, 1,024 levels) and accepts what the gateway refuses or would forward changed:
    duplicate members (RFC 8259 4), which it resolves silently; nesting beyond `MAX_JSON_DEPTH`;
    integers beyond 64 bits, which it rounds to floats. A body it refuses, or that may hold any of
    these (its members fewer than the names in its text, too deep, a float of 2**63 or more), is
    read by `json` with the checks that say what is wrong, so what is accepted, refused and
    forwarded is the same either way (`tests/test_rewrite.py` holds the two to each other).
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        members = _plain_members(body, MAX_JSON_DEPTH)
        # Every `":` is a match of `_MEMBER_NAME_END` too: more of them than members and the
        # pattern's count cannot equal the members either.
        named = raw.count(b'":')
        if members >= 0 and (
            (named == members and _SPACED_NAME_END.search(raw) is None)
            or (named < members and len(_MEMBER_NAME_END.findall(raw)) == members)
        ):
            return _checked(body, plain=True)
    return _checked(_parse_exactly(raw), plain=False)


def _plain_members(value: Any, limit: int) -> int:
    """The members of every object in a value orjson read; -1 if it nests deeper than `limit` or
    holds a float of 2**63 or more (see `_LARGE`)."""
    members = 0
    level: list[Any] = [value]
    for _ in range(limit):  # level by level, the top-level value's first
        below: list[Any] = []
        for node in level:
            kind = type(node)
            if kind is dict:
                members += len(node)
                below += node.values()
            elif kind is list:
                below += node
            elif kind is float and not -_LARGE < node < _LARGE:
                return -1
        if not below:
            return members
        level = below
    for node in level:  # the values one level below the limit: scalars only
        kind = type(node)
        if kind is dict or kind is list or (kind is float and not -_LARGE < node < _LARGE):
            return -1
    return members


def _parse_exactly(raw: bytes) -> Any:
    """`json` with the gateway's checks: each refusal says what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("The request body is not valid UTF-8.") from None
    if nesting_exceeds(text, MAX_JSON_DEPTH):
        raise InvalidJSON("The request body is nested too deeply.")
    try:
        body = _DECODER.decode(text)
    except InvalidJSON:
        raise
    except RecursionError:
        raise InvalidJSON("The request body is nested too deeply.") from None
    except ValueError:
        # json.JSONDecodeError, and Python's 4,300-digit integer limit.
        raise InvalidJSON() from None
    if SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(body):
        raise InvalidJSON("The request body contains a lone surrogate, which is not valid Unicode.")
    return body


def _checked(body: Any, *, plain: bool) -> ChatKitRequest:
    if not isinstance(body, dict):
        raise InvalidChatKitRequest("The request body must be a JSON object.")
    op = body.get("type")
    if not isinstance(op, str) or not op:
        raise InvalidChatKitRequest("The request body must have a string 'type'.")
    return ChatKitRequest(op, body, plain)


GATEWAY_METADATA_KEYS = ("userId", "userInfo", "pageContext", "requestId")


def rewrite_body(request: ChatKitRequest, injected: Mapping[str, Any], *, plain: bool = False) -> bytes:
    """The body with the gateway's keys written into its top-level `metadata`.

    `metadata` becomes an object (`null`, absent or not an object: `{}`); the client's copies of the
    gateway's keys are removed and `injected` written in their place. Every other member, in
    `metadata` and around it, passes unchanged and in order; unicode is kept as sent.

    `plain`: `injected` holds no float that is not finite (orjson would write it as `null`, where
    `json` refuses it). With a body orjson read, orjson writes the result; whatever it refuses
    (an integer beyond 64 bits, a lone surrogate in `injected`) goes to `json`.
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
    if plain and request.plain:
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError:
            pass
    try:
        return _ENCODER.encode(body).encode("utf-8")
    except (ValueError, RecursionError):
        # Parsing already refused what cannot be written back; this is the last guard.
        raise InvalidJSON() from None
