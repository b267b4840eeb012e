"""Before ready, run a request's gateway-side steps once on made-up data.

A first request after start used to cost well over a steady one (docs/BENCHMARKS.md, "First
request after start"), from first-run costs: the first signature check through python-jose and
OpenSSL, Python's adaptive interpreter specialising each function on first use, first-time object
layouts. Running the same code on a throwaway token
and a made-up ChatKit body at start-up moves that cost out of the first user's request. Nothing
here touches the issuers' keys, the caches, the metrics or the log.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .auth.jose import PublicKey, build_key
from .auth.verify import TokenVerifier
from .chatkit import parse_chatkit_request, rewrite_body
from .config import AuthConfig, GatewayConfig, IssuerConfig
from .identity import identity_of
from .outbound import Outbound

__all__ = ["warm_request_path"]

ISSUER = "https://warmup.chatkit-gateway.invalid"
ROUNDS = 10
SAMPLE_BODY = b'{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"hi"}]}}}'
SAMPLE_HEADERS = [
    (b"host", b"gateway.invalid"),
    (b"content-type", b"application/json"),
    (b"x-chatkit-page-context", b'{"url":"https://app.invalid/a","title":"A","path":"/a","headings":["A"]}'),
]


def sample_key_and_token(alg: Literal["RS256", "ES256"], claims: Mapping[str, Any]) -> tuple[PublicKey, str]:
    """A throwaway key pair and a token it signs (RFC 7515 compact form): for the warm-up, never
    for trust. Signed with `cryptography` directly; the public half goes through `build_key` as
    any JWKS key does."""
    kid = f"warmup-{alg}"
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    signing_input = b".".join(_b64(json.dumps(part).encode()) for part in (header, claims))
    jwk: dict[str, str]
    if alg == "RS256":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signature = rsa_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        numbers = rsa_key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": _b64_int(numbers.n, 256), "e": _b64_int(numbers.e, 3)}
    else:
        ec_key = ec.generate_private_key(ec.SECP256R1())
        # RFC 7518 3.4: an ES256 signature is R and S as two 32-byte big-endian integers, not DER.
        r, s = decode_dss_signature(ec_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        point = ec_key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": _b64_int(point.x, 32), "y": _b64_int(point.y, 32)}
    token = signing_input + b"." + _b64(signature)
    return build_key({**jwk, "kid": kid}), token.decode("ascii")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64_int(value: int, size: int) -> str:
    return _b64(value.to_bytes(size, "big")).decode("ascii")


class _Keys:
    def __init__(self, *keys: PublicKey) -> None:
        self._keys = {key.kid: key for key in keys}

    async def get_key(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)


async def warm_request_path(config: GatewayConfig, outbound: Outbound) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "warmup", "sub": "warmup", "iat": now, "exp": now + 60, "email": "w@invalid"}
    rsa_key, rsa_token = sample_key_and_token("RS256", claims)
    ec_key, ec_token = sample_key_and_token("ES256", claims)
    issuer = IssuerConfig(issuer=ISSUER, audiences=("warmup",), algorithms=("RS256", "ES256"))
    verifier = TokenVerifier(AuthConfig(issuers=(issuer,), token_cache_size=4), {ISSUER: _Keys(rsa_key, ec_key)})
    scope = {"headers": SAMPLE_HEADERS, "client": ("127.0.0.1", 1), "scheme": "http"}
    # A few rounds: Python specialises a function's bytecode after its first runs.
    for _ in range(ROUNDS):
        for token in (rsa_token, ec_token):
            principal = (await verifier.verify(token)).with_source("bearer")
        identity = identity_of(principal, config.identity, "warmup:")
        request = parse_chatkit_request(SAMPLE_BODY)
        injected = outbound.injected_metadata(SAMPLE_HEADERS, request.body.get("metadata"), identity, "warmup")
        body = rewrite_body(request, injected, plain=identity.plain)
        outbound.chatkit_headers(scope, "warmup", principal, identity, metadata=injected, body=body)
