"""The body rewrite: the gateway's keys in `metadata`, everything else as the client sent it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import chatkit
from gateway.chatkit import GATEWAY_METADATA_KEYS, ChatKitRequest, parse_chatkit_request, rewrite_body
from gateway.errors import InvalidChatKitRequest, InvalidJSON

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


# The two parsers (`chatkit.parse_chatkit_request`): orjson first, `json` with the gateway's checks
# for whatever orjson refuses or could read differently. Whatever a body is, both must give the
# same answer: the same refusal, or the same values of the same types in the same order.


def _strictly(value: Any) -> Any:
    """A value with its types spelled out: `1`, `1.0` and `True` compare equal in Python."""
    if isinstance(value, dict):
        return ("object", [(key, _strictly(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("array", [_strictly(item) for item in value])
    return (type(value).__name__, repr(value))


def _outcome(parse: Any, raw: bytes) -> Any:
    try:
        request = parse(raw)
    except (InvalidJSON, InvalidChatKitRequest) as error:
        return ("refused", type(error).__name__, error.message)
    return ("parsed", request.op, _strictly(request.body))


def _exactly(raw: bytes) -> ChatKitRequest:
    body = chatkit._parse_exactly(raw)
    return chatkit._checked(body, plain=False)


EDGE_BODIES = [
    b'{"type":"t","a":1,"a":2}',
    b'{"type":"t","p":{"x":[{"k":1,"k":1}]}}',
    b'{"type":"t","type":"u"}',
    b'{"type":"t","a\\\\":1,"a\\\\":2}',  # a name ending in an escaped backslash, twice
    b'{"type":"t","a" :1,"a":2}',  # a spaced name: counting `":` alone would miss the duplicate
    b'{"type":"t","p":{"k"\n:1,"k":2}}',
    b'{"type" :"t","a" :1,"a" :2}',  # every name spaced: fewer `":` than members, counted by pattern
    b'{"type" :"t","a" :1,"b" :2}',
    b'{"type":"t","a":"x\\":y","b":1}',  # a string holding what looks like a name's end
    b'{"type":"t","a":"x\\" : y","a":2}',
    b'{"type":"t","n":18446744073709551615}',
    b'{"type":"t","n":18446744073709551616}',
    b'{"type":"t","n":-9223372036854775808}',
    b'{"type":"t","n":-9223372036854775809}',
    b'{"type":"t","n":1234567890123456789}',
    b'{"type":"t","n":123456789012345678}',
    b'{"type":"t","n":"1234567890123456789012"}',
    b'{"type":"t","n":1e400}',
    b'{"type":"t","n":-1e400}',
    b'{"type":"t","n":1e-400}',
    b'{"type":"t","n":1.7976931348623157e308}',
    b'{"type":"t","n":-0.0,"m":-0,"f":1E5,"g":0.1,"h":5e-324}',
    b'{"type":"t","n":NaN}',
    b'{"type":"t","n":Infinity}',
    b'{"type":"t","s":"\\ud800"}',
    b'{"type":"t","s":"\\udc00\\ud800"}',
    b'{"type":"t","s":"\\ud83d\\ude80"}',
    b'{"type":"t","s":"\xed\xa0\x80"}',
    b'{"type":"t","s":"\xff"}',
    b'\xef\xbb\xbf{"type":"t"}',
    b'{"type":"t","s":"a\x01b"}',
    b'{"type":"t","s":"a\x7fb"}',
    b'\x0c{"type":"t"}',
    b' \t\r\n{"type" \t:\r\n"t"} \n',
    b'{"type":"t",}',
    b'{"type":"t"} x',
    b"[]",
    b'"t"',
    b"{}",
    b'{"type":""}',
    b'{"type":1}',
    b"",
    b'{"type":"t","d":' + b"[" * 255 + b"]" * 255 + b"}",
    b'{"type":"t","d":' + b"[" * 256 + b"]" * 256 + b"}",
    b'{"type":"t","d":' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"type":"t","d":' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}",
]


@pytest.mark.parametrize("raw", EDGE_BODIES)
def test_the_two_parsers_agree_on_edge_bodies(raw: bytes) -> None:
    assert _outcome(parse_chatkit_request, raw) == _outcome(_exactly, raw)


def test_duplicates_found_only_through_the_member_count_are_refused() -> None:
    # orjson keeps the last of two members silently; the count of names in the text finds them.
    for raw in (b'{"type":"t","a\\\\":1,"a\\\\":2}', b'{"type":"t","p":[{"k":1},{"q":{"k":1,"k":2}}]}'):
        with pytest.raises(InvalidJSON, match="duplicate member"):
            parse_chatkit_request(raw)


def test_integers_beyond_64_bits_are_forwarded_exactly() -> None:
    raw = b'{"type":"t","n":123456789012345678901234567890,"m":-9223372036854775809}'
    forwarded = rewrite_body(parse_chatkit_request(raw), {"userId": "u"}, plain=True)
    assert b'"n":123456789012345678901234567890' in forwarded and b'"m":-9223372036854775809' in forwarded


def test_a_body_orjson_reads_is_marked_plain_and_one_it_refuses_is_not() -> None:
    assert parse_chatkit_request(b'{"type":"t","n":1}').plain
    assert not parse_chatkit_request(b'{"type":"t","n":1e400}').plain


def test_an_injected_infinity_is_refused_when_the_identity_is_not_plain() -> None:
    # orjson would write it as null: `Identity.plain` is false for such a claim (tests/test_identity.py).
    request = parse_chatkit_request(b'{"type":"t"}')
    with pytest.raises(InvalidJSON):
        rewrite_body(request, {"userInfo": {"x": float("inf")}}, plain=False)


def test_an_injected_value_orjson_refuses_goes_to_json() -> None:
    forwarded = rewrite_body(parse_chatkit_request(b'{"type":"t"}'), {"userInfo": {"big": 2**70}}, plain=True)
    assert json.loads(forwarded)["metadata"] == {"userInfo": {"big": 2**70}}
    with pytest.raises(InvalidJSON):  # a lone surrogate: neither writes it
        rewrite_body(parse_chatkit_request(b'{"type":"t"}'), {"userId": "\ud800"}, plain=True)


json_texts = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(
            st.tuples(st.sampled_from(["a", "b", 'q"', "\\", "a\\", "é"]) | st.text(max_size=4), children), max_size=4
        )
    ),
    max_leaves=24,
)


def _text_of(value: Any, space: str, ascii_only: bool) -> str:
    """JSON text of `value`; a list of pairs is written as an object (duplicates allowed)."""
    if isinstance(value, list) and value and all(isinstance(item, tuple) for item in value):
        members = (
            f"{json.dumps(key, ensure_ascii=ascii_only)}{space}:{space}{_text_of(item, space, ascii_only)}"
            for key, item in value
        )
        return "{" + f",{space}".join(members) + "}"
    if isinstance(value, list):
        return "[" + f",{space}".join(_text_of(item, space, ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)  # infinities as `Infinity`: refused by both


@settings(max_examples=600, deadline=None)
@given(
    members=st.lists(st.tuples(st.sampled_from(["a", "type", "metadata", "p"]), json_texts), max_size=5),
    op=st.sampled_from(['"threads.list"', '"threads.create"', "1", '""']),
    space=st.sampled_from(["", " ", "\n\t"]),
    ascii_only=st.booleans(),
    plain=st.booleans(),
)
def test_the_two_parsers_agree_and_write_the_same_values(
    members: list[tuple[str, Any]], op: str, space: str, ascii_only: bool, plain: bool
) -> None:
    raw = "{" + f'"type":{op},' + _text_of(members, space, ascii_only)[1:] if members else "{" + f'"type":{op}' + "}"
    raw_bytes = raw.encode("utf-8", "surrogatepass")
    fast, exact = _outcome(parse_chatkit_request, raw_bytes), _outcome(_exactly, raw_bytes)
    assert fast == exact
    if fast[0] == "parsed":
        written = rewrite_body(parse_chatkit_request(raw_bytes), INJECTED, plain=plain)
        reference = rewrite_body(_exactly(raw_bytes), INJECTED)
        assert _strictly(json.loads(written)) == _strictly(json.loads(reference))
