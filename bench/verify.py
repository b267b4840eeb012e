"""Token verification cost: a cold RS256 or ES256 token, and a token the verifier has seen before.

In-process, no network: keys are generated here, served by a static key source, and each cold
sample is a token the verifier has never seen (so neither its cache nor any other shortcut helps).
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.auth.jose import PublicKey, build_key
from gateway.auth.verify import TokenVerifier
from gateway.config import AuthConfig, IssuerConfig

ISSUER = "https://idp.bench.invalid"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int, size: int) -> str:
    return _b64(value.to_bytes(size, "big"))


class _Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rsa_numbers = self.rsa.public_key().public_numbers()
        ec_numbers = self.ec.public_key().public_numbers()
        self.jwks = {
            "rsa": build_key({"kty": "RSA", "kid": "rsa", "n": _int(rsa_numbers.n, 256), "e": _int(rsa_numbers.e, 3)}),
            "ec": build_key(
                {"kty": "EC", "kid": "ec", "crv": "P-256", "x": _int(ec_numbers.x, 32), "y": _int(ec_numbers.y, 32)}
            ),
        }

    async def get_key(self, kid: str) -> PublicKey | None:
        return self.jwks.get(kid)

    def token(self, alg: str, payload: Mapping[str, Any]) -> str:
        kid = "rsa" if alg == "RS256" else "ec"
        header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        signing_input = f"{header}.{_b64(json.dumps(payload).encode())}".encode()
        if alg == "RS256":
            signature = self.rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(self.ec.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input.decode()}.{_b64(signature)}"


@dataclass(frozen=True)
class VerifyFigures:
    rs256_cold_us: float
    es256_cold_us: float
    cached_us: float
    samples: int


def _verifier(keys: _Keys, cache_size: int) -> TokenVerifier:
    issuer = IssuerConfig(issuer=ISSUER, audiences=("chatkit",), algorithms=("RS256", "ES256"))
    auth = AuthConfig(issuers=(issuer,), token_cache_size=cache_size)
    return TokenVerifier(auth, {ISSUER: keys})


def _claims(n: int) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": "chatkit", "sub": f"user-{n}", "iat": now, "exp": now + 3600, "email": "a@b.example"}


async def _measure(samples: int) -> VerifyFigures:
    keys = _Keys()
    cold = _verifier(keys, cache_size=0)
    figures = {}
    for alg in ("RS256", "ES256"):
        tokens = [keys.token(alg, _claims(n)) for n in range(samples)]
        await cold.verify(tokens[0])  # warm imports and code paths
        timings = []
        for token in tokens:
            started = time.perf_counter_ns()
            await cold.verify(token)
            timings.append(time.perf_counter_ns() - started)
        figures[alg] = statistics.median(timings) / 1000
    cached = _verifier(keys, cache_size=1000)
    token = keys.token("RS256", _claims(0))
    await cached.verify(token)
    rounds = samples * 20
    started = time.perf_counter_ns()
    for _ in range(rounds):
        await cached.verify(token)
    cached_us = (time.perf_counter_ns() - started) / rounds / 1000
    return VerifyFigures(figures["RS256"], figures["ES256"], cached_us, samples)


def run(samples: int = 500) -> VerifyFigures:
    return asyncio.run(_measure(samples))


if __name__ == "__main__":
    result = run()
    print(
        f"RS256 cold {result.rs256_cold_us:.1f} µs, ES256 cold {result.es256_cold_us:.1f} µs, "
        f"cached {result.cached_us:.2f} µs (median of {result.samples})"
    )
