"""Wycheproof JSON Web Signature vectors (C2SP/wycheproof, security-anchors.md §2.6).

The vectors carry bare JWS payloads ("foo", empty, binary), not claims sets, so they go through
the signature half of the verifier: `build_key` on the group's public JWK, `split_compact_jws`
(strict structure, base64 and header) and `verify_jws_signature`; a key source is mimicked by
matching the header `kid`. Every `invalid` vector must be rejected. Every `valid` vector of an
algorithm the gateway verifies must be accepted, except the documented exclusions; `valid`
vectors of other algorithms (HS256, PS*) must be rejected too, since the gateway refuses them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.jose import UnusableKey, build_key
from gateway.auth.jws import split_compact_jws
from gateway.auth.verify import verify_jws_signature
from gateway.config import ALLOWED_ALGORITHMS
from gateway.errors import InvalidToken

# A copy of C2SP/wycheproof testvectors_v1/json_web_signature_test.json (Apache-2.0, LICENSE beside it).
VECTORS = Path(__file__).resolve().parents[1] / "data" / "wycheproof" / "json_web_signature_test.json"

DATA: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
MAX_BYTES = 8192

# valid vectors the gateway rejects on purpose, with the reason.
EXCLUDED = {
    # RFC 7520 Figure 27: the JWK says `"alg": "ES521"`, which is no JWS algorithm (ES512 is);
    # a key that states an unknown alg fits nothing (RFC 7517 §4.4).
    347: "JWK alg ES521 is not a JWS algorithm",
    351: "JWK alg ES521 is not a JWS algorithm",
}
# HMAC vectors whose only difference from a valid one is their base64; see the strict-base64 test.
NOT_CANONICAL_BUT_VALID = {
    372: "'?' inserted in the header: not base64url, refused by design (RFC 7515 §2, SPEC §10)",
    373: "'?' inserted in the payload: not base64url, refused by design (RFC 7515 §2, SPEC §10)",
}


def _cases() -> list[Any]:
    params = []
    for group in DATA["testGroups"]:
        jwk = group.get("public") or group.get("private")
        for case in group["tests"]:
            name = f"tc{case['tcId']}-{jwk.get('alg') or jwk['kty']}-{case['comment']}"
            params.append(pytest.param(jwk, case, id=name))
    return params


CASES = _cases()


def header_alg(jws: object) -> str | None:
    try:
        return split_compact_jws(jws, max_bytes=MAX_BYTES).alg  # type: ignore[arg-type]
    except InvalidToken:
        return None


def gateway_accepts(jwk: dict[str, Any], jws: object) -> bool:
    """The production signature path; a JSON-serialized JWS (a dict) is refused like any non-str."""
    try:
        key = build_key({"kid": "wycheproof", **jwk})
        parsed = split_compact_jws(jws, max_bytes=MAX_BYTES)  # type: ignore[arg-type]
        if parsed.alg not in ALLOWED_ALGORITHMS or parsed.kid != key.kid:
            return False
        verify_jws_signature(parsed, key)
    except (UnusableKey, InvalidToken):
        return False
    return True


@pytest.mark.parametrize(("jwk", "case"), CASES)
def test_vector(jwk: dict[str, Any], case: dict[str, Any]) -> None:
    accepted = gateway_accepts(jwk, case["jws"])
    in_scope = header_alg(case["jws"]) in ALLOWED_ALGORITHMS and case["tcId"] not in EXCLUDED
    assert case["result"] in ("valid", "invalid")
    assert accepted == (case["result"] == "valid" and in_scope)


def hmac_accepts(jwk: dict[str, Any], jws: object) -> bool:
    """Strict parsing plus a test-side HS256 check: the gateway never verifies HMAC itself."""
    try:
        parsed = split_compact_jws(jws, max_bytes=MAX_BYTES)  # type: ignore[arg-type]
    except InvalidToken:
        return False
    secret = _b64(jwk["k"])
    expected = hmac.new(secret, parsed.signing_input, hashlib.sha256).digest()
    return parsed.alg == "HS256" and parsed.kid == jwk["kid"] and hmac.compare_digest(expected, parsed.signature)


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


HMAC_CASES = [p for p in CASES if p.values[0]["kty"] == "oct"]


def _contradictions() -> set[int]:
    """`invalid` vectors of a group whose token equals a `valid` one of the same group (same key)."""
    found = set()
    for group in DATA["testGroups"]:
        valid = {case["jws"] for case in group["tests"] if case["result"] == "valid" and isinstance(case["jws"], str)}
        found |= {case["tcId"] for case in group["tests"] if case["result"] == "invalid" and case["jws"] in valid}
    return found


# tc367 "invalidBase64Padding" and tc370 "invalidBase64PaddingInPayload" equal tc357 ("ValidMac")
# character for character in this copy of the file: their padding was lost upstream.
CONTRADICTIONS = _contradictions()


def test_only_the_known_vector_defects_contradict_each_other() -> None:
    assert CONTRADICTIONS == {367, 370}


@pytest.mark.parametrize(("jwk", "case"), [p for p in HMAC_CASES if p.values[1]["tcId"] not in CONTRADICTIONS])
def test_hmac_vector_structure_is_strict(jwk: dict[str, Any], case: dict[str, Any]) -> None:
    # The HS256 vectors are where Wycheproof tests base64 and structure (tc360-375), and the
    # gateway rejects HS256 outright; a test-side MAC keeps those checks meaningful. The two
    # defective vectors are left out here and pinned by the test above.
    expected = case["result"] == "valid" and case["tcId"] not in NOT_CANONICAL_BUT_VALID
    assert hmac_accepts(jwk, case["jws"]) == expected


def test_counts() -> None:
    tally: dict[str, int] = {"vectors": 0, "invalid_rejected": 0, "valid_accepted": 0, "valid_out_of_scope": 0}
    for param in CASES:
        jwk, case = param.values
        tally["vectors"] += 1
        accepted = gateway_accepts(jwk, case["jws"])
        if case["result"] == "invalid" and not accepted:
            tally["invalid_rejected"] += 1
        elif case["result"] == "valid" and accepted:
            tally["valid_accepted"] += 1
        elif case["result"] == "valid":
            tally["valid_out_of_scope"] += 1
    print(f"wycheproof JWS: {tally}")
    assert tally == {"vectors": 401, "invalid_rejected": 355, "valid_accepted": 18, "valid_out_of_scope": 28}
