"""The JSON depth scan: exact on valid JSON (strings' brackets are text), linear on anything."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.jsondepth import nesting_exceeds

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ax'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\a'), inner, max_size=3),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@given(JSON_VALUES, st.integers(min_value=0, max_value=12))
def test_the_scan_agrees_with_the_parsed_depth(value: Any, limit: int) -> None:
    assert nesting_exceeds(json.dumps(value), limit) == (depth(value) > limit)


@pytest.mark.parametrize(
    ("text", "exceeds"),
    [
        pytest.param("[" * 256 + "]" * 256, False, id="at-the-limit"),
        pytest.param("[" * 257 + "]" * 257, True, id="one-over"),
        pytest.param('["' + "[" * 300 + '"]', False, id="brackets-in-a-string"),
        pytest.param('["\\"' + "[" * 300 + '"]', False, id="brackets-after-an-escaped-quote"),
        pytest.param('["\\\\"' + "[" * 300 + "]" * 300 + "]", True, id="brackets-after-an-escaped-backslash"),
        pytest.param('{"a":' * 300 + "1" + "}" * 300, True, id="objects"),
        pytest.param("[]" * 10_000, False, id="many-brackets-side-by-side"),
    ],
)
def test_depth_rows(text: str, exceeds: bool) -> None:
    assert nesting_exceeds(text, 256) is exceeds


def test_an_unterminated_string_full_of_escaped_quotes_is_scanned_once() -> None:
    # Each `"` could start a string that runs to the end; the scan must not retry from each one
    # (quadratic: about 10^11 steps on these 2 MB). The test's own timeout is the bound.
    assert nesting_exceeds('"\\"' * 700_000 + "[" * 300, 256) is False
