"""Hostile input over HTTP: whatever a client sends, the real gateway answers 4xx with a code or forwards.

Each example goes to the session's gateway (a subprocess on loopback) in front of the real ChatKit
test backend, whose recorded requests show whether the example was forwarded. The rule checked:

- not forwarded: a 4xx (400, 401, 403, 413, 415, 431...) with the JSON body
  `{"error": {"code": str, "message": str}}`;
- forwarded: exactly one upstream request, whose body is a JSON object carrying the gateway's
  `metadata.userId` (and whose headers carry the gateway's identity, never the client's), and the
  backend's own answer relayed (2xx, or the backend's 4xx for a ChatKit request it cannot use);
- never a 5xx.

The in-process properties of the same steps live in test_rewrite.py, test_pagecontext.py and
tests/auth/test_verify_properties.py; these send the bytes through uvicorn, the ASGI app and httpx.
Framing headers (`Content-Length`, `Transfer-Encoding`, `Host`) are left out: the HTTP server owns
them and test_request_checks.py covers smuggling.
"""

from __future__ import annotations

import base64
import json
import unicodedata
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from gateway.chatkit import GATEWAY_METADATA_KEYS, NON_STREAMING_TYPES, STREAMING_TYPES
from gateway.headers import HOP_BY_HOP_HEADERS
from gateway.pagecontext import PAGE_CONTEXT_KEYS
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, user_token
from tests.support.idp import LoopbackIdP

USER = "user-1"
# Module- and session-scoped fixtures only, so hypothesis's function-scoped-fixture check stays on.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_BODY = {"type": "threads.list", "params": {}}
GATEWAY_SET_HEADERS = (
    "content-type",  # the body is re-encoded: always the gateway's own application/json
    "x-user-id",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "accept-encoding",
)


@pytest.fixture(scope="module")
def client(gateway: RunningGateway) -> Iterator[httpx.Client]:
    """A client without credentials of its own; tests add the bearer they mean to send."""
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def recorder(backend: Backend) -> Iterator[httpx.Client]:
    """A keep-alive client of the backend's `/_debug` routes (`Backend.reset()` opens a client per call)."""
    with httpx.Client(base_url=backend.url, trust_env=False, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def auth(session_idp: LoopbackIdP) -> dict[str, str]:
    return bearer(user_token(session_idp, sub=USER))


def _event(text: str) -> None:
    # `exchange` also serves plain tests, where hypothesis has no run to record events in.
    if currently_in_test_context():
        event(text)


def exchange(client: httpx.Client, recorder: httpx.Client, content: bytes, headers: Any) -> tuple[httpx.Response, Any]:
    """POST `content` to /chatkit; the response, and the upstream request if it was forwarded."""
    recorder.post("/_debug/reset").raise_for_status()
    response = client.post("/chatkit", content=content, headers=headers)
    recorded = recorder.get("/_debug/requests").raise_for_status().json()
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if not recorded:
        assert 400 <= response.status_code < 500, response.status_code
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert set(error) == {"code", "message"}
        assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str)
        _event(f"refused: {response.status_code} {error['code']}")
        return response, None
    _event(f"forwarded: {response.status_code}")
    (upstream,) = recorded
    body = upstream["json"]
    assert isinstance(body, dict), upstream["body"]
    assert body["metadata"]["userId"] == USER
    assert body["metadata"]["userInfo"]["id"] == USER
    assert body["metadata"]["requestId"] == response.headers["x-request-id"]
    sent = [name for name, _ in upstream["headers"]]
    for name in GATEWAY_SET_HEADERS:
        assert sent.count(name) == 1, (name, sent)
    assert dict(upstream["headers"])["x-user-id"] == USER
    assert dict(upstream["headers"])["x-forwarded-for"] == "127.0.0.1"
    assert not (HOP_BY_HOP_HEADERS | {b"cookie", b"authorization"}) & {name.encode() for name in sent}
    return response, upstream


def json_post(client: httpx.Client, recorder: httpx.Client, content: bytes, headers: dict[str, str]) -> Any:
    return exchange(client, recorder, content, {"content-type": "application/json", **headers})


# ------------------------------------------------------------------------------------------ bodies


def json_trees(floats: st.SearchStrategy[float], texts: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | floats | texts
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=25,
    )


# NaN and Infinity too (not JSON: a 400); text with lone surrogates, written as \udXXX escapes.
json_values = json_trees(st.floats(), st.text(st.characters(exclude_categories=()), max_size=30))
valid_json_values = json_trees(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
ops = st.sampled_from(sorted(STREAMING_TYPES | NON_STREAMING_TYPES)) | st.text(max_size=20) | json_values
page_contexts = st.dictionaries(st.sampled_from([*PAGE_CONTEXT_KEYS, "x"]), valid_json_values, max_size=6)
metadata_values = json_values | st.dictionaries(
    st.sampled_from([*GATEWAY_METADATA_KEYS, "threadId", "x"]) | st.text(max_size=6),
    json_values | page_contexts,
    max_size=6,
)


@st.composite
def chatkit_like_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Objects with a random `type`, `metadata` and `params` (each maybe absent), plus other members."""
    body: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    for name, values in (("type", ops), ("metadata", metadata_values), ("params", json_values)):
        if draw(st.integers(0, 4)):  # present four times in five
            body[name] = draw(values)
    return body


def encode(value: object, ascii_only: bool) -> bytes:
    # json.dumps writes NaN/Infinity and lone surrogates; `surrogatepass` keeps the latter as bytes.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@FUZZ
@given(value=json_values, ascii_only=st.booleans())
def test_any_json_value_as_body_is_a_4xx_or_a_correct_forward(
    client: httpx.Client, recorder: httpx.Client, auth: dict[str, str], value: object, ascii_only: bool
) -> None:
    json_post(client, recorder, encode(value, ascii_only), auth)


@FUZZ
@given(body=chatkit_like_bodies(), ascii_only=st.booleans())
def test_any_type_metadata_and_params_are_a_4xx_or_a_forward_with_the_gateways_identity(
    client: httpx.Client, recorder: httpx.Client, auth: dict[str, str], body: dict[str, Any], ascii_only: bool
) -> None:
    response, upstream = json_post(client, recorder, encode(body, ascii_only), auth)
    if upstream is None:
        return
    forwarded = upstream["json"]
    assert isinstance(body.get("type"), str) and body["type"], "forwarded a body without a string type"
    assert forwarded["type"] == body["type"]
    assert forwarded.get("params") == body.get("params")
    client_metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    for key, value in client_metadata.items():
        if key not in GATEWAY_METADATA_KEYS:
            assert forwarded["metadata"][key] == value


@FUZZ
@given(raw=st.binary(max_size=600))
def test_any_bytes_as_body_are_a_4xx_or_a_correct_forward(
    client: httpx.Client, recorder: httpx.Client, auth: dict[str, str], raw: bytes
) -> None:
    json_post(client, recorder, raw, auth)


@FUZZ
@given(
    prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b" \t\r\n"]),
    raw=st.sampled_from([b"", b" ", b"\r\n", b"\x00", b"{}"]) | st.binary(max_size=200),
)
def test_a_valid_request_with_a_bom_whitespace_or_trailing_bytes_is_a_4xx_or_a_correct_forward(
    client: httpx.Client, recorder: httpx.Client, auth: dict[str, str], prefix: bytes, raw: bytes
) -> None:
    json_post(client, recorder, prefix + json.dumps(VALID_BODY).encode() + raw, auth)


# ----------------------------------------------------------------------------------------- headers

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
NOTABLE_HEADERS = [
    *(name.decode() for name in HOP_BY_HOP_HEADERS),
    "accept",
    "accept-encoding",
    "accept-language",
    "authorization",
    "chatkit-frame-instance-id",
    "content-encoding",
    "content-type",
    "cookie",
    "expect",
    "forwarded",
    "origin",
    "referer",
    "traceparent",
    "user-agent",
    "x-chatkit-identity",
    "x-chatkit-page-context",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
    "x-user-email",
    "x-user-id",
]
header_names = (
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=30) | st.sampled_from(NOTABLE_HEADERS).map(str.title)
).filter(lambda name: name.lower() not in FRAMING)
# RFC 9110 5.5 field values: visible ASCII and obs-text, inner spaces and tabs; controls are the
# HTTP server's to refuse (uvicorn answers 400 text/plain before the gateway sees the request).
field_values = st.binary(max_size=300).map(
    lambda raw: bytes(byte for byte in raw if byte in (0x20, 0x09) or 0x21 <= byte != 0x7F).strip(b" \t")
)
# Visible ASCII with inner spaces (what h11 lets a client send: no leading or trailing whitespace),
# raw field values, and lists of header names as a `Connection` header carries them.
header_values = (
    st.from_regex(r"\A([\x21-\x7e]([\x20-\x7e]{0,80}[\x21-\x7e])?)?\Z")
    | field_values
    | st.lists(header_names | st.sampled_from(NOTABLE_HEADERS), min_size=1, max_size=5).map(", ".join)
)


@FUZZ
@given(extra=st.lists(st.tuples(header_names, header_values), max_size=8))
def test_any_headers_added_to_a_valid_request_are_a_4xx_or_a_correct_forward(
    client: httpx.Client, recorder: httpx.Client, auth: dict[str, str], extra: list[tuple[str, str | bytes]]
) -> None:
    headers = [("content-type", "application/json"), *auth.items(), *extra]
    response, upstream = exchange(client, recorder, json.dumps(VALID_BODY).encode(), headers)
    if upstream is None:
        return
    assert 200 <= response.status_code < 300
    sent = {name for name, _ in upstream["headers"]}
    connection = [value for name, value in extra if name.lower() == "connection"]
    listed = {
        part.strip().lower()
        for value in connection
        for part in (value.decode("latin-1") if isinstance(value, bytes) else value).split(",")
    }
    assert not sent & listed - {"content-length", "host", *GATEWAY_SET_HEADERS}


def clean_context_value(value: object) -> bool:
    return (
        isinstance(value, str)
        and bool(value)
        and not any(unicodedata.category(char) in ("Cc", "Cs") for char in value)
        and value == value.strip()
    )


page_context_headers = (
    field_values
    | page_contexts.map(lambda context: json.dumps(context).encode())
    | page_contexts.map(lambda context: base64.urlsafe_b64encode(json.dumps(context).encode()).rstrip(b"="))
)


@FUZZ
@given(header=page_context_headers, body_context=st.none() | page_contexts | valid_json_values)
def test_any_page_context_is_sanitised_or_dropped_never_an_error(
    client: httpx.Client, recorder: httpx.Client, auth: dict[str, str], header: bytes, body_context: object
) -> None:
    body: dict[str, Any] = dict(VALID_BODY)
    if body_context is not None:
        body["metadata"] = {"pageContext": body_context}
    headers = {"content-type": "application/json", **auth, "x-chatkit-page-context": header}
    response, upstream = exchange(client, recorder, json.dumps(body).encode(), headers)
    assert upstream is not None and 200 <= response.status_code < 300, response.text[:300]
    context = upstream["json"]["metadata"].get("pageContext")
    if context is not None:
        assert isinstance(context, dict) and context
        assert set(context) <= set(PAGE_CONTEXT_KEYS)
        assert all(clean_context_value(value) for value in context.values()), context


# ------------------------------------------------------------------------------------- credentials

token_texts = (
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=400).map(str.encode)
    | st.from_regex(rb"\A[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,200}\.[A-Za-z0-9_-]{0,80}\Z")
    | field_values  # obs-text too: a token is ASCII, anything else is a 401, not a decoding error
)


@FUZZ
@given(scheme=st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"Basic", b"Token", b""]), token=token_texts)
def test_any_authorization_value_without_a_valid_token_is_a_401_and_nothing_is_forwarded(
    client: httpx.Client, recorder: httpx.Client, scheme: bytes, token: bytes
) -> None:
    value = (scheme + b" " + token).strip(b" \t")
    headers = [("content-type", "application/json"), ("authorization", value)]
    response, upstream = exchange(client, recorder, json.dumps(VALID_BODY).encode(), headers)
    assert upstream is None and response.status_code == 401


@FUZZ
@given(
    value=token_texts,
    name=st.sampled_from([b"auth_token", b"other"]),
    origin=st.sampled_from([None, "null", "https://evil.example", "http://127.0.0.1"]),
)
def test_any_cookie_value_without_a_valid_token_is_refused_and_nothing_is_forwarded(
    client: httpx.Client, recorder: httpx.Client, value: bytes, name: bytes, origin: str | None
) -> None:
    headers: list[tuple[str, str | bytes]] = [("content-type", "application/json"), ("cookie", name + b"=" + value)]
    if origin:
        headers.append(("origin", origin))
    response, upstream = exchange(client, recorder, json.dumps(VALID_BODY).encode(), headers)
    assert upstream is None and response.status_code in (401, 403)


# ------------------------------------------------------------------------------------ content type


@pytest.mark.parametrize(
    "content_types",
    [
        [("content-type", "application/json; charset=iso-8859-1")],
        [("content-type", "application/json"), ("content-type", "text/plain")],
        [("content-type", "application/json"), ("connection", "content-type")],
    ],
    ids=["foreign-charset", "second-content-type", "connection-listed"],
)
def test_the_rewritten_body_goes_upstream_as_exactly_one_application_json(
    client: httpx.Client, recorder: httpx.Client, auth: dict[str, str], content_types: list[tuple[str, str]]
) -> None:
    response, upstream = exchange(client, recorder, json.dumps(VALID_BODY).encode(), [*content_types, *auth.items()])
    assert upstream is not None and response.status_code == 200
    sent = [value for name, value in upstream["headers"] if name == "content-type"]
    assert len(sent) == 1 and sent[0].split(";")[0] == "application/json"
    assert sent[0] in ("application/json", "application/json; charset=utf-8")
