"""Page context: the client's word about where the user is, cut down to a few short strings."""

from __future__ import annotations

import base64
import json
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import MetadataConfig
from gateway.pagecontext import PageContextPolicy

APP = "https://app.example.com"
PAGE = {"url": f"{APP}/docs/intro", "title": "Intro", "path": "/docs/intro"}


def policy(allowed: tuple[str, ...] = (APP,), **metadata: Any) -> PageContextPolicy:
    return PageContextPolicy(MetadataConfig(**metadata), frozenset(allowed))


def as_json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def as_base64url(value: object, *, padded: bool) -> bytes:
    encoded = base64.urlsafe_b64encode(as_json(value))
    return encoded if padded else encoded.rstrip(b"=")


def from_header(value: bytes, rules: PageContextPolicy | None = None) -> dict[str, str] | None:
    return (rules or policy()).from_request(value, None, None)


def from_body(value: object, rules: PageContextPolicy | None = None) -> dict[str, str] | None:
    return (rules or policy()).from_request(None, value, None)


def from_body_and_header(header: bytes, body: object) -> dict[str, str] | None:
    return policy().from_request(header, body, None)


# ------------------------------------------------------------------------------------------ sources


def test_header_as_json_is_read() -> None:
    assert from_header(as_json(PAGE)) == PAGE


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_header_as_base64url_json_is_read(padded: bool) -> None:
    page = {**PAGE, "title": "Prix & tarifs — été ?>"}  # bytes that base64url encodes with - and _
    assert from_header(as_base64url(page, padded=padded)) == page


def test_header_with_latin1_bytes_is_read() -> None:
    # fetch() sends characters up to U+00FF as single bytes, which is not UTF-8.
    assert from_header('{"title": "café"}'.encode("latin-1")) == {"title": "café"}


def test_body_page_context_is_read() -> None:
    assert from_body(PAGE) == PAGE


def test_header_wins_over_body() -> None:
    assert policy().from_request(as_json({"title": "header"}), {"title": "body"}, None) == {"title": "header"}


@pytest.mark.parametrize(
    "header",
    [b"{not json", b"[1, 2]", b'"a string"', b"null", b"!!!", b"e30", b"abcde", b'{"title": 5}'],
    ids=["invalid-json", "array", "string", "null", "not-base64", "empty-object-base64", "bad-length", "nothing-kept"],
)
def test_bad_header_is_dropped_and_body_used_instead(header: bytes) -> None:
    assert policy().from_request(header, {"title": "body"}, None) == {"title": "body"}


@pytest.mark.parametrize(
    "header", [b"{not json", b"[1]", b"bnVsbA", b"__8"], ids=["invalid-json", "array", "base64-null", "base64-not-utf8"]
)
def test_bad_header_alone_gives_no_context(header: bytes) -> None:
    assert from_header(header) is None


def test_referer_is_the_fallback_without_query_or_fragment() -> None:
    found = policy().from_request(None, None, f"{APP}/docs/intro?token=secret#part".encode())
    assert found == {"url": f"{APP}/docs/intro", "path": "/docs/intro"}


def test_referer_without_path_gives_root() -> None:
    assert policy().from_request(None, None, APP.encode()) == {"url": f"{APP}/", "path": "/"}


def test_referer_drops_credentials_and_default_port() -> None:
    found = policy().from_request(None, None, b"https://user:pw@APP.example.com:443/a")
    assert found == {"url": f"{APP}/a", "path": "/a"}


@pytest.mark.parametrize(
    "referer",
    [b"https://evil.example/docs", b"javascript:alert(1)", b"not a url", b"https://app.example.com:99999/"],
    ids=["foreign", "javascript", "garbage", "bad-port"],
)
def test_unusable_referer_gives_nothing(referer: bytes) -> None:
    assert policy().from_request(None, None, referer) is None


def test_body_wins_over_referer() -> None:
    assert policy().from_request(None, {"title": "body"}, f"{APP}/x".encode()) == {"title": "body"}


def test_nothing_anywhere_gives_none() -> None:
    assert policy().from_request(None, None, None) is None


# ------------------------------------------------------------------------------------------ content


def test_unknown_keys_are_dropped() -> None:
    assert from_body({"title": "T", "role": "admin", "userId": "someone-else"}) == {"title": "T"}


def test_configured_extra_key_is_kept() -> None:
    extended = policy(page_context_keys=("product",))
    assert from_body({"title": "T", "product": "Widget", "other": "x"}, extended) == {"title": "T", "product": "Widget"}


@pytest.mark.parametrize(
    "value",
    [5, 1.5, True, None, {"nested": "object"}, ["list"]],
    ids=["int", "float", "bool", "null", "object", "list"],
)
def test_non_string_values_are_dropped(value: object) -> None:
    assert from_body({"title": value, "description": "kept"}) == {"description": "kept"}


def test_headings_list_of_strings_is_joined() -> None:
    assert from_body({"headings": ["Intro", "Setup", "", "FAQ"]}) == {"headings": "Intro, Setup, FAQ"}


@pytest.mark.parametrize(
    "headings", [["Intro", 3], [{"a": "b"}], [["nested"]], [None]], ids=["number", "object", "nested", "null"]
)
def test_headings_with_non_strings_are_dropped(headings: list[object]) -> None:
    assert from_body({"headings": headings, "title": "T"}) == {"title": "T"}


def test_long_value_is_cut_to_the_cap() -> None:
    capped = policy(page_context_value_max_chars=100)
    assert from_body({"title": "x" * 500}, capped) == {"title": "x" * 100}


def test_long_headings_list_is_cut_to_the_cap() -> None:
    capped = policy(page_context_value_max_chars=20)
    found = from_body({"headings": [f"heading {n}" for n in range(10_000)]}, capped)
    assert found == {"headings": "heading 0, heading 1,"[:20].rstrip()}


def test_context_over_the_byte_cap_is_dropped_whole() -> None:
    small = policy(page_context_max_bytes=200, page_context_value_max_chars=150)
    assert from_body({"title": "t" * 150}, small) == {"title": "t" * 150}
    assert from_body({"title": "t" * 150, "description": "d" * 150}, small) is None


def test_byte_cap_counts_utf8_bytes() -> None:
    small = policy(page_context_max_bytes=32)
    assert from_body({"title": "é" * 10}, small) == {"title": "é" * 10}  # 20 bytes of text, 12 of JSON
    assert from_body({"title": "é" * 12}, small) is None


def test_control_characters_are_removed_and_breaks_become_spaces() -> None:
    found = from_body({"title": "a\x00b\x1b[31mc\u202eevil\nline\r\nnext\u2028end\x7f "})
    assert found == {"title": "ab[31mcevil line  next end"}


def test_lone_surrogate_is_removed() -> None:
    assert from_body({"title": "a\ud800b"}) == {"title": "ab"}


def test_value_of_only_controls_is_dropped() -> None:
    assert from_body({"title": "\x00\x01 \n", "path": "/x"}) == {"path": "/x"}


def test_unicode_is_kept() -> None:
    page = {"title": "Résumé — 你好 🌍 👩‍💻", "description": "مرحبا"}
    assert from_header(as_json(page)) == page
    assert from_header(as_base64url(page, padded=False)) == page


# ---------------------------------------------------------------------------------------------- url


def test_foreign_origin_url_is_dropped_and_the_rest_kept() -> None:
    assert from_body({**PAGE, "url": "https://evil.example/phish"}) == {"title": "Intro", "path": "/docs/intro"}


def test_any_http_origin_is_allowed_when_none_are_configured() -> None:
    assert from_body({"url": "http://anywhere.example:8080/x"}, policy(allowed=())) == {
        "url": "http://anywhere.example:8080/x"
    }


def test_configured_origin_matches_in_any_case_and_default_port() -> None:
    assert from_body({"url": "HTTPS://App.Example.com:443/x"}) == {"url": "HTTPS://App.Example.com:443/x"}
    assert from_body({"url": "https://app.example.com/x"}, policy(allowed=("https://app.example.com:443",))) == {
        "url": "https://app.example.com/x"
    }


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        "file:///etc/passwd",
        "ftp://app.example.com/x",
        "//app.example.com/x",
        "/relative",
        "https://",
        "https://app.example.com:99999/",
        "https://app.example.com@evil.example/",
        "https://user:password@app.example.com/",
    ],
    ids=[
        "javascript",
        "data",
        "file",
        "ftp",
        "scheme-relative",
        "relative",
        "no-host",
        "bad-port",
        "userinfo-trick",
        "credentials",
    ],
)
def test_url_that_is_not_a_plain_allowed_http_url_is_dropped(url: str) -> None:
    assert from_body({"url": url, "title": "T"}, policy(allowed=())) == {"title": "T"}


# Pages keep tokens, reset codes and session ids in the query and fragment; the backend gets what
# the Referer fallback would give it: scheme, host and path.
QUERY_AND_FRAGMENT: list[Any] = [
    pytest.param(f"{APP}/docs/intro?token=secret", f"{APP}/docs/intro", id="query"),
    pytest.param(f"{APP}/docs/intro#access_token=secret", f"{APP}/docs/intro", id="fragment"),
    pytest.param(f"{APP}/docs/intro?a=1#frag", f"{APP}/docs/intro", id="query-and-fragment"),
    pytest.param(f"{APP}/docs/intro#frag?token=secret", f"{APP}/docs/intro", id="question-mark-in-fragment"),
    pytest.param(f"{APP}?token=secret", APP, id="query-without-path"),
    pytest.param(f"{APP}/docs/intro?", f"{APP}/docs/intro", id="empty-query"),
    pytest.param("https://evil.example?@app.example.com/", None, id="userinfo-lookalike-in-query"),
    pytest.param("https://evil.example#@app.example.com/", None, id="userinfo-lookalike-in-fragment"),
]


@pytest.mark.parametrize("source", ["header", "body"])
@pytest.mark.parametrize(("url", "kept"), QUERY_AND_FRAGMENT)
def test_url_loses_its_query_and_fragment(source: str, url: str, kept: str | None) -> None:
    page = {"url": url, "title": "T"}
    found = from_header(as_json(page)) if source == "header" else from_body(page)
    assert found == ({"url": kept, "title": "T"} if kept else {"title": "T"})


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        pytest.param("/docs?token=secret", "/docs", id="query"),
        pytest.param("/docs#access_token=secret", "/docs", id="fragment"),
        pytest.param("/?a=1#b", "/", id="root"),
    ],
)
def test_path_loses_its_query_and_fragment(path: str, kept: str) -> None:
    assert from_body({"path": path}) == {"path": kept}


def test_deeply_nested_header_is_not_parsed_and_the_body_is_used() -> None:
    header = b'{"url":"' + APP.encode() + b'/x","extra":' + b"[" * 40 + b"]" * 40 + b"}"
    assert from_body_and_header(header, PAGE) == PAGE


@pytest.mark.parametrize(
    "path",
    ["docs", "//evil.example/x", "/\\evil.example", ""],
    ids=["relative", "scheme-relative", "backslash", "empty"],
)
def test_path_must_be_absolute_on_this_site(path: str) -> None:
    assert from_body({"path": path, "title": "T"}) == {"title": "T"}


# ---------------------------------------------------------------------------------------- properties

# Any code point, lone surrogates and controls included: they must come out clean.
TEXT = st.text(st.characters(exclude_categories=[])) | st.text(st.sampled_from("a é\x00\n\u202e\ud800/:"))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5),
    max_leaves=30,
)
KEY = st.sampled_from(["url", "title", "path", "description", "headings", "extra", "other"])
CONTEXT = st.dictionaries(KEY, JSON | st.lists(TEXT, max_size=5) | TEXT, max_size=7)
SMALL = policy(allowed=(), page_context_max_bytes=300, page_context_value_max_chars=80, page_context_keys=("extra",))


def assert_well_formed(found: dict[str, str] | None, used: PageContextPolicy) -> None:
    if found is None:
        return
    assert found
    assert all(isinstance(key, str) and isinstance(value, str) and value for key, value in found.items())
    assert set(found) <= set(used.keys)
    assert all(len(value) <= used.max_chars for value in found.values())
    assert len(json.dumps(found, ensure_ascii=False, separators=(",", ":")).encode("utf-8")) <= used.max_bytes
    assert not any(unicodedata.category(char) in ("Cc", "Cs") for value in found.values() for char in value)


@settings(max_examples=300)
@given(header=st.binary(max_size=400), referer=st.none() | st.binary(max_size=200))
def test_arbitrary_header_bytes_never_raise(header: bytes, referer: bytes | None) -> None:
    assert_well_formed(SMALL.from_request(header, None, referer), SMALL)


@settings(max_examples=300)
@given(context=CONTEXT | JSON, encode=st.sampled_from(["json", "base64", "base64-padded"]))
def test_arbitrary_json_header_never_raises(context: object, encode: str) -> None:
    # ASCII JSON, so that lone surrogates in the text arrive as \ud800 escapes, as a client could send them.
    raw = json.dumps(context).encode()
    header = raw if encode == "json" else base64.urlsafe_b64encode(raw)
    header = header if encode != "base64" else header.rstrip(b"=")
    assert_well_formed(SMALL.from_request(header, None, None), SMALL)


@settings(max_examples=300)
@given(context=CONTEXT | JSON, referer=st.none() | st.text(max_size=100).map(str.encode))
def test_arbitrary_body_page_context_never_raises(context: object, referer: bytes | None) -> None:
    assert_well_formed(SMALL.from_request(None, context, referer), SMALL)
