"""Page context: what page the user is on, sanitised before it reaches the backend (docs/metadata.md).

The browser says where the user is (URL, title, headings) so the backend can put it into a prompt.
It is the client's word, not the gateway's: anything may arrive, so only a few keys survive, as
short printable strings, and a context that is too big or malformed is dropped, never an error.

Sources, first usable one wins: the page-context header (JSON or base64url JSON), then the body's
`metadata.pageContext`, then the `Referer` (`url` and `path` only). A header that is malformed or
leaves nothing after sanitising does not hide the other sources: "the header wins" decides between
two good contexts, while a bad one is simply absent.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from .auth.origin import origin_of
from .config import MetadataConfig
from .jsondepth import nesting_exceeds

__all__ = ["PAGE_CONTEXT_KEYS", "PageContextPolicy"]

PAGE_CONTEXT_KEYS = ("url", "title", "path", "description", "headings")

BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
# A page context is a flat object: one nested deeper than this is not one, and is not parsed.
MAX_HEADER_DEPTH = 32
# Query and fragment: where pages keep tokens, reset codes and session ids (`?token=...#access_token=`).
QUERY_OR_FRAGMENT = re.compile(r"[?#]")
# Line and paragraph breaks become spaces so that words stay apart; tabs likewise.
BREAKS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x85\u2028\u2029")
# Bidirectional overrides and isolates reorder how text is displayed ("Trojan Source",
# CVE-2021-42574): in a prompt or a log they can make a context read differently from what it is.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _clean(text: str) -> str:
    """Printable text: breaks become spaces; C0/C1 controls, lone surrogates and bidi controls go."""
    if text.isprintable():
        return text.strip()
    out = []
    for char in text:
        if char in BREAKS:
            out.append(" ")
        elif char in BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs"):
            # Lone surrogates (Cs) could not be encoded as UTF-8 when the body is re-serialised.
            continue
        else:
            out.append(char)
    return "".join(out).strip()


def _decode_header(raw: bytes) -> dict[str, object] | None:
    """The JSON object a page-context header carries, as JSON or base64url JSON; None if neither."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # A browser's fetch sends characters up to U+00FF as single bytes (Headers are ByteStrings).
        text = raw.decode("latin-1")
    text = text.strip()
    found = _load_object(text)
    if found is None and BASE64URL.fullmatch(text):
        try:
            decoded = base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
            found = _load_object(decoded.decode("utf-8"))
        except (binascii.Error, ValueError):
            return None
    return found


def _load_object(text: str) -> dict[str, object] | None:
    if nesting_exceeds(text, MAX_HEADER_DEPTH):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError and Python's 4,300-digit integer limit.
        return None
    return value if isinstance(value, dict) else None


def _joined(items: Iterable[object], limit: int) -> str | None:
    """A list of strings joined with ", " (docs/metadata.md), read only as far as the cap needs."""
    parts: list[str] = []
    length = 0
    for item in items:
        if not isinstance(item, str):
            return None
        part = _clean(item)
        if part and length <= limit:
            parts.append(part)
            length += len(part) + 2
    return ", ".join(parts)


class PageContextPolicy:
    """The page-context rules of one configuration: `from_request` picks, cleans and bounds."""

    def __init__(self, metadata: MetadataConfig, allowed_origins: frozenset[str]) -> None:
        self.header_name = metadata.page_context_header.lower().encode("latin-1")
        self.keys = tuple(dict.fromkeys((*PAGE_CONTEXT_KEYS, *metadata.page_context_keys)))
        self.max_bytes = metadata.page_context_max_bytes
        self.max_chars = metadata.page_context_value_max_chars
        # Compared with `origin_of` output, so a configured ":443" or upper case still matches.
        self.allowed_origins = frozenset(origin_of(item) or item for item in allowed_origins)

    def from_request(
        self, header_value: bytes | None, body_page_context: object, referer: bytes | None
    ) -> dict[str, str] | None:
        """The sanitised context from the first usable source, or None. Never raises."""
        if header_value is not None:
            found = self.sanitise(_decode_header(header_value))
            if found is not None:
                return found
        found = self.sanitise(body_page_context)
        if found is not None:
            return found
        if referer is not None:
            return self.from_referer(referer.decode("latin-1"))
        return None

    def sanitise(self, candidate: object) -> dict[str, str] | None:
        """The kept keys of `candidate` as capped printable strings, or None if nothing fits."""
        if not isinstance(candidate, Mapping):
            return None
        result: dict[str, str] = {}
        for key in self.keys:
            value = self._value(key, candidate.get(key))
            if value:
                result[key] = value
        return self._bounded(result)

    def from_referer(self, referer: str) -> dict[str, str] | None:
        """`url` and `path` of the referring page: scheme, host and path, never query or fragment.

        A foreign or malformed Referer gives nothing at all: the path of someone else's page
        would mislead the backend as much as its URL.
        """
        origin = origin_of(referer)
        if origin is None or not self._origin_allowed(origin):
            return None
        path = _clean(urlsplit(referer).path) or "/"
        result = {"url": self._url(origin + path), "path": self._path(path)}
        return self._bounded({key: value for key, value in result.items() if value})

    def _value(self, key: str, value: object) -> str | None:
        if key == "headings" and isinstance(value, list):
            text = _joined(value, self.max_chars)
        elif isinstance(value, str):
            text = _clean(value)
        else:
            return None
        if text is None:
            return None
        text = text[: self.max_chars].rstrip()
        if key == "url":
            return self._url(text)
        if key == "path":
            return self._path(text)
        return text

    def _url(self, url: str) -> str | None:
        # Scheme, host and path only, as the Referer fallback keeps them (an authority cannot hold
        # `?` or `#`, so the first of either ends the path).
        url = QUERY_OR_FRAGMENT.split(url, maxsplit=1)[0][: self.max_chars]
        origin = origin_of(url)
        if origin is None or not self._origin_allowed(origin):
            return None
        # A password in a page URL must not travel into prompts and logs; `user@` also disguises hosts.
        if "@" in urlsplit(url).netloc:
            return None
        return url

    def _path(self, path: str) -> str | None:
        path = QUERY_OR_FRAGMENT.split(path, maxsplit=1)[0][: self.max_chars]
        # "//host" and "/\host" are protocol-relative to browsers: a backend that builds a link
        # from the path would point at another site.
        if not path.startswith("/") or path.startswith(("//", "/\\")):
            return None
        return path

    def _origin_allowed(self, origin: str) -> bool:
        return not self.allowed_origins or origin in self.allowed_origins

    def _bounded(self, context: dict[str, str]) -> dict[str, str] | None:
        if not context:
            return None
        size = len(json.dumps(context, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        return context if size <= self.max_bytes else None
