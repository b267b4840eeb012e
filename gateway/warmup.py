"""Before ready, run a request's gateway-side steps once on made-up data.

Measured: the first request after start cost 2.5× a steady one, from first-run costs (the first
signature check through python-jose and OpenSSL, Python's adaptive interpreter specialising each
function on first use, first-time object layouts). Running the same code on a throwaway token
and a made-up ChatKit body at start-up moves that cost out of the first user's request. Nothing
here touches the issuers' keys, the caches, the metrics or the log.
"""

from __future__ import annotations

import time

from .auth.jose import PublicKey, sample_key_and_token
from .auth.verify import TokenVerifier
from .chatkit import parse_chatkit_request, rewrite_body
from .config import AuthConfig, IssuerConfig
from .identity import identity_of
from .runtime import Runtime

__all__ = ["warm_request_path"]

ISSUER = "https://warmup.chatkit-gateway.invalid"
ROUNDS = 10
SAMPLE_BODY = b'{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"hi"}]}}}'
SAMPLE_HEADERS = [
    (b"host", b"gateway.invalid"),
    (b"content-type", b"application/json"),
    (b"x-chatkit-page-context", b'{"url":"https://app.invalid/a","title":"A","path":"/a","headings":["A"]}'),
]


class _Keys:
    def __init__(self, *keys: PublicKey) -> None:
        self._keys = {key.kid: key for key in keys}

    async def get_key(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)


async def warm_request_path(runtime: Runtime) -> None:
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
        identity = identity_of(principal, runtime.config.identity, "warmup:")
        request = parse_chatkit_request(SAMPLE_BODY)
        injected = runtime.injected_metadata(SAMPLE_HEADERS, request.body.get("metadata"), identity, "warmup")
        body = rewrite_body(request, injected)
        runtime.base_headers(scope, "warmup")
        runtime.identity_headers(principal, identity, "warmup", metadata=injected, body=body)
