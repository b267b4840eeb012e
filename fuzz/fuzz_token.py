"""Coverage-guided fuzzing of the token parser and verifier (atheris, libFuzzer underneath).

    python fuzz/fuzz_token.py [CORPUS_DIR ...] [-max_total_time=60] [-runs=N] [-artifact_prefix=DIR/]

Every input becomes a token and goes through `parse_compact_jws`, `TokenVerifier.verify` (one
issuer, a static RS256 + ES256 key source, a fixed clock) and the verifier's uncached path without
its catch-all, so a bug that `verify` would turn into a quiet 401 still shows. The one rule: any
input ends in a parsed token, a principal, or an `AuthError` subclass; any other exception is a
crash, and libFuzzer writes the input to `crash-*` (under `-artifact_prefix`). A token the harness
did not sign itself must never verify.

The first input byte picks how the rest becomes a token, so the fuzzer gets past base64:

- 0: the bytes as text (latin-1), as a client could send them;
- 1: `header 0xFF payload 0xFF signature`, each base64url-encoded (0xFF never occurs in UTF-8);
- 2: `header 0xFF payload`, base64url-encoded and signed with the known EC key, so the header and
  claim checks run on JSON the fuzzer wrote.

An empty corpus folder named on the command line is seeded with valid tokens of each shape, and
a dictionary of JOSE names is passed to libFuzzer unless `-dict=` is given.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["gateway"]):
    from gateway.auth.jws import ParsedToken, parse_compact_jws
    from gateway.auth.verify import Principal, TokenVerifier
    from gateway.errors import AuthError

from tests.support.clock import FakeClock  # noqa: E402  (as below)
from tests.support.keys import (  # noqa: E402  (after the instrumented imports, so gateway is instrumented)
    ISSUER,
    StaticKeySource,
    auth_config,
    b64url,
    claims,
    ec_private,
    make_token,
    public_jwk,
    rsa_private,
    run_now,
    sign,
)

MAX_TOKEN_BYTES = 8192
SEPARATOR = b"\xff"
RSA, EC = rsa_private("fuzz"), ec_private("fuzz")
VERIFIER = TokenVerifier(
    auth_config(token_cache_size=0),
    {ISSUER: StaticKeySource([public_jwk(RSA, "rsa-1"), public_jwk(EC, "ec-1")])},
    clock=FakeClock(),
)
EC_HEADER = json.dumps({"alg": "ES256", "typ": "JWT", "kid": "ec-1"}).encode()
CLAIMS = json.dumps(claims()).encode()
VALID_TOKENS = frozenset(
    {
        make_token({"alg": "RS256", "kid": "rsa-1"}, claims(), RSA),
        make_token({"alg": "ES256", "kid": "ec-1"}, claims(), EC),
    }
)
SEEDS = {
    **{f"text-valid-{n}": b"\x00" + token.encode() for n, token in enumerate(sorted(VALID_TOKENS))},
    "text-none": b"\x00" + make_token({"alg": "none", "kid": "rsa-1"}, claims(), None).encode(),
    "text-jwe": b"\x00a.b.c.d.e",
    "parts": b"\x01" + EC_HEADER + SEPARATOR + CLAIMS + SEPARATOR + bytes(64),
    "signed": b"\x02" + EC_HEADER + SEPARATOR + CLAIMS,
    "signed-nested": b"\x02" + EC_HEADER + SEPARATOR + b'{"iss":"' + ISSUER.encode() + b'","x":[[[{"a":[]}]]]}',
}
DICTIONARY = [
    *("alg", "kid", "typ", "crit", "cty", "jku", "jwk", "x5c", "b64", "at+jwt", "JWT", "none"),
    *("RS256", "ES256", "HS256", "ES384", "rsa-1", "ec-1", "iss", "sub", "aud", "exp", "nbf", "iat"),
    *(ISSUER, "chatkit-gateway", "1800000000", "1e400", "NaN", "-Infinity", "true", "null", "\\ud800", "\\u0000"),
]


def token_of(data: bytes) -> tuple[str, bool]:
    """The token an input stands for, and whether the harness signed it (a seed, or mode 2)."""
    if not data:
        return "", False
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        text = rest.decode("latin-1")
        return text, text in VALID_TOKENS
    parts = rest.split(SEPARATOR, 2)
    header, payload = parts[0], parts[1] if len(parts) > 1 else b""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    if mode == 1:
        return f"{signing_input}.{b64url(parts[2] if len(parts) > 2 else b'')}", False
    return f"{signing_input}.{b64url(sign('ES256', signing_input.encode('ascii'), EC))}", True


def check(token: str, signed: bool) -> None:
    """Parse and verify `token`; raise (a crash, to libFuzzer) if anything breaks the rule."""
    try:
        assert isinstance(parse_compact_jws(token, max_bytes=MAX_TOKEN_BYTES), ParsedToken)
    except AuthError:
        pass
    for verify in (VERIFIER.verify, VERIFIER._verify_uncached):
        try:
            principal = run_now(verify(token))
        except AuthError:
            continue
        assert isinstance(principal, Principal)
        if not signed:
            raise AssertionError("a token the harness did not sign verified")


def test_one_input(data: bytes) -> None:
    check(*token_of(data))


def prepare(argv: list[str]) -> list[str]:
    """Seed empty corpus folders; add the dictionary unless one is given."""
    for arg in argv[1:]:
        folder = Path(arg)
        if not arg.startswith("-") and folder.is_dir() and not any(folder.iterdir()):
            for name, data in SEEDS.items():
                (folder / name).write_bytes(data)
    if any(arg.startswith("-dict=") for arg in argv):
        return argv
    # One fixed file, rewritten each run: libFuzzer ends the process, so nothing could delete it.
    entries = Path(tempfile.gettempdir()) / "chatkit-gateway-fuzz-token.dict"
    entries.write_text("".join(json.dumps(word) + "\n" for word in DICTIONARY))
    return [*argv, f"-dict={entries}"]


def main() -> None:
    for data in SEEDS.values():
        test_one_input(data)  # the harness itself works before libFuzzer starts mutating
    atheris.Setup(prepare(sys.argv), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
