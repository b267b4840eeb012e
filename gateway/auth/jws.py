"""Strict parsing of a compact JWS (RFC 7515 §7.1) before any key or claim is looked at.

A token has exactly one accepted spelling. Everything here answers attacker input, so every
failure is an `InvalidToken` with a fixed message, and the order is cheapest-first: the size
bound comes before any base64 or JSON work (docs/jwt-attacks.md J26-J33, J38-J41).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

from gateway.errors import InvalidToken
from gateway.jsondepth import nesting_exceeds

__all__ = [
    "ACCEPTED_TYPES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_KID_CHARS",
    "CompactJWS",
    "ParsedToken",
    "check_token_size",
    "parse_compact_jws",
    "split_compact_jws",
]

# Real IdP headers are ~100 bytes; an `x5c` chain of two certificates still fits.
MAX_HEADER_BYTES = 4096
MAX_KID_CHARS = 256
# Real claim sets nest 2-4 levels; json's C scanner recurses per level (RecursionError: jwt-attacks.md J38).
MAX_JSON_DEPTH = 32
# RFC 7515 §4.1.9 / RFC 9068 §2.1, compared case-insensitively (a media type).
ACCEPTED_TYPES = frozenset({"jwt", "at+jwt"})

_MALFORMED = "The token is malformed."
_BAD_HEADER = "The token header is not acceptable."
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class CompactJWS:
    """A compact JWS whose structure and protected header passed every check. Not yet verified."""

    header: Mapping[str, Any]
    alg: str
    kid: str
    payload: bytes = field(repr=False)
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)


@dataclass(frozen=True)
class ParsedToken(CompactJWS):
    """A compact JWS whose payload is a strict JSON object: an unverified JWT claims set."""

    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)


def check_token_size(token: object, max_bytes: int) -> str:
    """The token as `str` if it is ASCII and at most `max_bytes` long (jwt-attacks.md J41: before any work)."""
    if not isinstance(token, str) or len(token) > max_bytes:
        raise InvalidToken("The token is too large.")
    if not token.isascii():
        raise InvalidToken(_MALFORMED)
    return token


def split_compact_jws(token: str, *, max_bytes: int, types: frozenset[str] = ACCEPTED_TYPES) -> CompactJWS:
    """Check size, shape, base64 and the protected header (a `typ`, when present, one of `types`,
    lower case); the payload stays raw bytes."""
    token = check_token_size(token, max_bytes)
    dots = token.count(".")
    if dots == 4:
        # RFC 8725 §3.3, §3.6: no JWE, and so no decrypt on attacker input (jwt-attacks.md J25).
        raise InvalidToken("Encrypted tokens are not accepted.")
    if dots != 2:
        raise InvalidToken(_MALFORMED)
    header_text, payload_text, signature_text = token.split(".")
    if not header_text or not signature_text:
        raise InvalidToken(_MALFORMED)
    header = _parse_object(_decode_segment(header_text), max_bytes=MAX_HEADER_BYTES)
    alg, kid = _check_header(header, types)
    return CompactJWS(
        header=header,
        alg=alg,
        kid=kid,
        payload=_decode_segment(payload_text),
        signing_input=f"{header_text}.{payload_text}".encode("ascii"),
        signature=_decode_segment(signature_text),
    )


def parse_compact_jws(token: str, *, max_bytes: int, types: frozenset[str] = ACCEPTED_TYPES) -> ParsedToken:
    """`split_compact_jws`, then the payload as a strict JSON object (RFC 7519 §7.2 step 10)."""
    jws = split_compact_jws(token, max_bytes=max_bytes, types=types)
    claims = _parse_object(jws.payload, max_bytes=max_bytes)
    return ParsedToken(
        header=jws.header,
        alg=jws.alg,
        kid=jws.kid,
        payload=jws.payload,
        signing_input=jws.signing_input,
        signature=jws.signature,
        claims=claims,
    )


def _check_header(header: Mapping[str, Any], types: frozenset[str]) -> tuple[str, str]:
    alg = header.get("alg")
    if not isinstance(alg, str):
        # A list or dict alg made python-jose raise TypeError (jwt-attacks.md J39).
        raise InvalidToken(_BAD_HEADER)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
        # kid is required (jwt-attacks.md J07); it is only ever a dictionary key (RFC 8725 §3.10).
        raise InvalidToken(_BAD_HEADER)
    if "typ" in header:
        typ = header["typ"]
        if not isinstance(typ, str) or not typ.isascii() or typ.lower() not in types:
            # RFC 8725 §3.11: explicit typing keeps other kinds of JWT out (jwt-attacks.md J22).
            raise InvalidToken(_BAD_HEADER)
    if "crit" in header:
        # RFC 7515 §4.1.11: we understand no extension, so any `crit` must be refused (jwt-attacks.md J11).
        raise InvalidToken(_BAD_HEADER)
    if "cty" in header:
        # RFC 8725 §3.3: no nested JWTs, so no content type is expected (jwt-attacks.md J24).
        raise InvalidToken(_BAD_HEADER)
    # `jku`, `x5u`, `jwk` and `x5c` are ignored, never followed (RFC 8725 §3.10; jwt-attacks.md J09-J10).
    return alg, kid


def _decode_segment(text: str) -> bytes:
    # RFC 7515 §2: base64url without padding. One spelling only: padding, `+/`, stray characters
    # and non-zero trailing bits all fail the re-encode comparison (jwt-attacks.md J29-J33; Wycheproof tc360-375).
    if not _SEGMENT.fullmatch(text):
        raise InvalidToken(_MALFORMED)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise InvalidToken(_MALFORMED) from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != text.encode("ascii"):
        raise InvalidToken(_MALFORMED)
    return raw


def _parse_object(raw: bytes, *, max_bytes: int) -> Mapping[str, Any]:
    if len(raw) > max_bytes:
        raise InvalidToken(_MALFORMED)
    try:
        # RFC 8725 §3.7: UTF-8, strictly (no BOM, no encoded surrogates).
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidToken(_MALFORMED) from None
    if nesting_exceeds(text, MAX_JSON_DEPTH):
        raise InvalidToken(_MALFORMED)
    try:
        value = _DECODER.decode(text)
    except (ValueError, RecursionError):
        # JSONDecodeError, duplicates, NaN/Infinity, 4,300-digit ints; RecursionError only if the
        # depth scan was fooled by invalid JSON.
        raise InvalidToken(_MALFORMED) from None
    if not isinstance(value, dict):
        raise InvalidToken(_MALFORMED)
    if _SURROGATE_ESCAPE.search(text):
        _reject_lone_surrogates(value)
    return MappingProxyType(value)


def _reject_lone_surrogates(value: Any) -> None:
    # `\ud800` is valid JSON but not valid Unicode; it would fail later when the claims are
    # re-encoded for the upstream, so it fails here, as a bad token.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidToken(_MALFORMED) from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8725 §2.6 / RFC 7519 §4: `{"sub":"admin","sub":"alice"}` has no single meaning (jwt-attacks.md J27-J28).
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member")
    return members


def _no_constant(name: str) -> NoReturn:
    # NaN, Infinity and -Infinity are not JSON (RFC 8259 §6).
    raise ValueError("non-finite number")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constant)
