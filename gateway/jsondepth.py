"""How deeply a JSON text nests, found without recursing: the bound that comes before any parser.

Python's `json` recurses once per level (the C scanner when parsing, the encoder when writing back),
and so does everything that walks the result. A body of a few kilobytes of brackets reaches the
interpreter's recursion limit in one of them, so the depth is bounded on the text, before any of
them runs. The top-level value is level 1.
"""

from __future__ import annotations

import re

__all__ = ["nesting_exceeds"]

# A string (its brackets are text, not structure) or a bracket; only brackets are captured. A
# string that never closes runs to the end in one match (the closing quote is optional), so the
# scan stays linear on any input; such text is invalid JSON and its parser refuses it anyway.
_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|([\[\]{}])', re.DOTALL)
_OPENING = frozenset("[{")


def nesting_exceeds(text: str, limit: int) -> bool:
    """Whether a JSON value in `text` nests deeper than `limit` levels.

    Exact for valid JSON; on invalid JSON it may be wrong either way, which is harmless because
    the parser that runs next refuses that text.
    """
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case: too few brackets to nest that deep, whatever their order
    depth = 0
    for bracket in _STRUCTURE.findall(text):
        if not bracket:
            continue  # a string
        if bracket in _OPENING:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False
