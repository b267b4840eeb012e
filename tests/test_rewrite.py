"""The body rewrite: the gateway's keys in `metadata`, everything else as the client sent it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chatkit import GATEWAY_METADATA_KEYS, parse_chatkit_request, rewrite_body

INJECTED = {"userId": "u-1", "userInfo": {"id": "u-1", "name": "Ada"}, "requestId": "req-1"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
metadata_values = json_values | st.dictionaries(
    st.sampled_from([*GATEWAY_METADATA_KEYS, "threadHint", "x", ""]) | st.text(max_size=6), json_values, max_size=6
)


@st.composite
def chatkit_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(
        st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("type", "metadata")), json_values, max_size=5)
    )
    items = list(body.items())
    position = draw(st.integers(0, len(items)))
    items.insert(position, ("type", draw(st.text(min_size=1, max_size=30))))
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), ("metadata", draw(metadata_values)))
    return dict(items)


@settings(max_examples=400, deadline=None)
@given(body=chatkit_bodies(), ascii_only=st.booleans())
def test_forwarded_body_equals_the_input_except_the_gateways_keys(body: dict[str, Any], ascii_only: bool) -> None:
    raw = json.dumps(body, ensure_ascii=ascii_only).encode()
    forwarded = json.loads(rewrite_body(parse_chatkit_request(raw), INJECTED))

    client_metadata = body.get("metadata")
    kept = (
        {k: v for k, v in client_metadata.items() if k not in GATEWAY_METADATA_KEYS}
        if isinstance(client_metadata, dict)
        else {}
    )
    assert forwarded["metadata"] == {**kept, **INJECTED}
    assert {k: v for k, v in forwarded.items() if k != "metadata"} == {k: v for k, v in body.items() if k != "metadata"}
    expected_order = list(body) if "metadata" in body else [*body, "metadata"]
    assert list(forwarded) == expected_order


def test_unicode_is_written_as_characters_not_escapes() -> None:
    raw = '{"type":"threads.create","params":{"text":"héllo 東京 🚀"}}'.encode()
    forwarded = rewrite_body(parse_chatkit_request(raw), {"userId": "ü"})
    assert "héllo 東京 🚀".encode() in forwarded and b'"userId":"\xc3\xbc"' in forwarded


@pytest.mark.parametrize("metadata", ["null", '"text"', "[1]", "7", "{}"])
def test_metadata_that_is_not_an_object_becomes_one(metadata: str) -> None:
    raw = f'{{"type":"threads.list","metadata":{metadata},"params":{{}}}}'.encode()
    forwarded = json.loads(rewrite_body(parse_chatkit_request(raw), {"userId": "u"}))
    assert forwarded == {"type": "threads.list", "metadata": {"userId": "u"}, "params": {}}


def test_client_copies_of_the_gateways_keys_are_removed_even_when_the_gateway_has_no_value() -> None:
    raw = b'{"type":"t","metadata":{"userId":"admin","pageContext":{"url":"x"},"requestId":"r","userInfo":{},"keep":1}}'
    forwarded = json.loads(rewrite_body(parse_chatkit_request(raw), {"userId": "u"}))
    assert forwarded["metadata"] == {"keep": 1, "userId": "u"}
