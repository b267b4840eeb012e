"""A real OpenID provider on loopback: discovery, JWKS, token signing, and switchable failures.

A Starlette app served by uvicorn in a background thread, so tests change its state directly
(`idp.mode = "down"`, `idp.rotate()`) and count what the gateway fetched. `stop()` makes the port
refuse connections; `start()` brings it back on the same port, so the issuer URL does not change.

    with running_idp() as idp:
        token = idp.sign({"iss": idp.issuer, "sub": "alice", ...})
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.keys import b64url, public_jwk, sign

__all__ = ["HUGE_BYTES", "KeyKind", "LoopbackIdP", "Mode", "SigningKey", "b64url", "idp", "running_idp"]

KeyKind = Literal["RSA", "EC"]
Mode = Literal["ok", "down", "hang", "garbage", "huge", "empty"]

HUGE_BYTES = 4 * 1024 * 1024
HANG_LIMIT_SECONDS = 60.0
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


@dataclass(frozen=True)
class SigningKey:
    kid: str
    kind: KeyKind
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, kind: KeyKind) -> SigningKey:
        private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if kind == "RSA":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            private = ec.generate_private_key(ec.SECP256R1())
        return cls(kid=f"{kind.lower()}-{uuid.uuid4().hex[:12]}", kind=kind, private=private)

    @property
    def default_alg(self) -> str:
        return "RS256" if self.kind == "RSA" else "ES256"

    def public_jwk(self) -> dict[str, str]:
        jwk: dict[str, str] = public_jwk(self.private, self.kid, alg=self.default_alg)
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def signature(self, alg: str, data: bytes) -> bytes:
        family, bits = alg[:2], alg[2:]
        if alg == "none":
            return b""
        if family == "HS" and bits in _HASHES:
            # The RS256→HS256 key-confusion attack: HMAC keyed with the public key's PEM.
            return sign(alg, data, self.public_pem())
        if family == "RS" and bits in _HASHES and isinstance(self.private, rsa.RSAPrivateKey):
            return sign(alg, data, self.private)
        if family == "PS" and bits in _HASHES and isinstance(self.private, rsa.RSAPrivateKey):
            digest = _HASHES[bits]()
            return self.private.sign(
                data, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest
            )
        if alg == "ES256" and isinstance(self.private, ec.EllipticCurvePrivateKey):
            return sign(alg, data, self.private)
        raise ValueError(f"cannot sign {alg} with a {self.kind} key")


class LoopbackIdP:
    """An identity provider at `http://127.0.0.1:PORT` whose state tests change between requests."""

    def __init__(self) -> None:
        first = SigningKey.generate("RSA")
        second = SigningKey.generate("EC")
        self._keys: dict[str, SigningKey] = {first.kid: first, second.kid: second}
        self._published: list[str] = [first.kid, second.kid]
        self.current_kid = first.kid
        self.mode: Mode = "ok"
        self.cache_control: str | None = None
        self.extra_keys: list[Any] = []  # raw entries appended to the set (oct keys, duplicates, junk)
        self.discovery_issuer: str | None = None  # what discovery claims as `issuer`; default: self.issuer
        self.discovery_jwks_uri: str | None = None  # what discovery names as `jwks_uri`; default: self.jwks_url
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.jwks_fetch_times: list[float] = []  # time.monotonic() of each JWKS request
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._app = Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self._discovery),
                Route("/jwks.json", self._jwks),
            ]
        )

    @property
    def app(self) -> Starlette:
        """Discovery and JWKS as an ASGI app, for a gateway in the test's own process."""
        return self._app

    # -- keys and tokens ---------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks.json"

    @property
    def kids(self) -> list[str]:
        """The kids published in the JWKS, in order."""
        return list(self._published)

    def kid_of(self, kind: KeyKind) -> str:
        """The first published kid of this kind."""
        return next(kid for kid in self._published if self._keys[kid].kind == kind)

    def key(self, kid: str) -> SigningKey:
        return self._keys[kid]

    def add_key(self, kind: KeyKind = "RSA") -> str:
        """Publish a new key (not the default signer) and return its kid."""
        key = SigningKey.generate(kind)
        self._keys[key.kid] = key
        self._published = [*self._published, key.kid]
        return key.kid

    def rotate(self, kind: KeyKind | None = None) -> str:
        """Replace every published key with one new key, which becomes the default signer.

        Retired keys can still sign (`sign(kid=old)`), as an attacker holding one could.
        """
        key = SigningKey.generate(kind or self._keys[self.current_kid].kind)
        self._keys[key.kid] = key
        self._published = [key.kid]
        self.current_kid = key.kid
        return key.kid

    def remove_key(self, kid: str) -> None:
        """Stop publishing `kid`; it can still sign."""
        self._published = [k for k in self._published if k != kid]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._keys[kid].public_jwk() for kid in self._published] + list(self.extra_keys)}

    def sign(
        self,
        payload: Mapping[str, Any],
        *,
        kid: str | None = None,
        alg: str | None = None,
        header_extra: Mapping[str, Any] | None = None,
    ) -> str:
        """A compact JWS over `payload`; `header_extra` may add or override header members."""
        key = self._keys[kid or self.current_kid]
        alg = alg or key.default_alg
        header = {"alg": alg, "typ": "JWT", "kid": key.kid, **(header_extra or {})}
        signing_input = f"{_segment(header)}.{_segment(payload)}"
        return f"{signing_input}.{b64url(key.signature(alg, signing_input.encode()))}"

    # -- HTTP --------------------------------------------------------------------------------

    async def _failure(self) -> Response | None:
        started = time.monotonic()
        while self.mode == "hang" and not self._stopping and time.monotonic() - started < HANG_LIMIT_SECONDS:
            await asyncio.sleep(0.02)
        # After a hang ends, the answer follows whatever mode the test switched to.
        mode = "down" if self.mode == "hang" else self.mode
        if mode == "down":
            return Response("identity provider unavailable", status_code=500)
        if mode == "garbage":
            return Response("<html>this is not JSON", media_type="text/html")
        if mode == "huge":
            return StreamingResponse(_huge_body(), media_type="application/json")
        if mode == "empty":
            return JSONResponse({"keys": []})
        return None

    async def _discovery(self, request: Request) -> Response:
        self.discovery_fetches += 1
        failure = await self._failure()
        if failure is not None:
            return failure
        return JSONResponse(
            {
                "issuer": self.discovery_issuer or self.issuer,
                "jwks_uri": self.discovery_jwks_uri or self.jwks_url,
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        )

    async def _jwks(self, request: Request) -> Response:
        self.jwks_fetches += 1
        self.jwks_fetch_times.append(time.monotonic())
        failure = await self._failure()
        if failure is not None:
            return failure
        headers = {"Cache-Control": self.cache_control} if self.cache_control is not None else None
        return JSONResponse(self.jwks(), headers=headers)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on 127.0.0.1 (the same port again after a `stop()`)."""
        if self._thread is not None:
            raise RuntimeError("already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._stopping = False
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="idp")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test identity provider did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        """Close the port: connections are refused until `start()`."""
        if self._server is None or self._thread is None:
            return
        self._stopping = True
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None


def _segment(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


async def _huge_body() -> AsyncIterator[bytes]:
    # Streamed without Content-Length, so only a reader that counts as it goes can stop early.
    yield b'{"keys": [], "padding": "'
    chunk = b"x" * 65536
    for _ in range(HUGE_BYTES // len(chunk)):
        yield chunk
    yield b'"}'


@contextmanager
def running_idp() -> Iterator[LoopbackIdP]:
    provider = LoopbackIdP()
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


@pytest.fixture
def idp() -> Iterator[LoopbackIdP]:
    """A fresh identity provider per test, since tests change its keys and modes."""
    with running_idp() as provider:
        yield provider
