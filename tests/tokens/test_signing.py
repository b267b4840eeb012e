"""The gateway's signing keys: which are accepted, the `kid`, and tokens stock libraries verify."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import ECKey, RSAKey

from gateway.tokens.signing import KeyRefused, PublishedKeys, load_key_file, load_signing_key
from tests.tokens.keyfiles import new_key, write_key


@pytest.mark.parametrize(("kind", "alg"), [("ec", "ES256"), ("rsa", "RS256")], ids=["ec-p256", "rsa-2048"])
def test_a_supported_key_signs_tokens_pyjwt_verifies_with_the_published_jwk(
    tmp_path: Path, kind: str, alg: str
) -> None:
    key = load_signing_key(write_key(tmp_path, "key.pem", new_key(kind)))
    token = key.sign({"sub": "alice", "aud": "backend", "n": "é"})

    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
    assert key.jwk["alg"] == alg and key.jwk["use"] == "sig" and key.jwk["kid"] == key.kid
    public = jwt.PyJWK.from_dict(dict(key.jwk))
    assert jwt.decode(token, public, algorithms=[alg], audience="backend") == {
        "sub": "alice",
        "aud": "backend",
        "n": "é",
    }


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_kid_is_the_rfc7638_thumbprint(tmp_path: Path, kind: str) -> None:
    private = new_key(kind)
    key = load_signing_key(write_key(tmp_path, "key.pem", private))
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    independent = (ECKey if kind == "ec" else RSAKey).import_key(pem)
    assert key.kid == independent.thumbprint()


def test_an_altered_token_does_not_verify(tmp_path: Path) -> None:
    key = load_signing_key(write_key(tmp_path, "key.pem", new_key("ec")))
    header, payload, signature = key.sign({"sub": "alice"}).split(".")
    forged_payload = jwt.utils.base64url_encode(json.dumps({"sub": "mallory"}).encode()).decode()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{header}.{forged_payload}.{signature}", jwt.PyJWK.from_dict(dict(key.jwk)), algorithms=["ES256"])


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("ec-p384", "secp384r1"), ("rsa-1024", "1024 bits"), ("ed25519", "only EC P-256")],
    ids=["ec-p384", "rsa-1024", "ed25519"],
)
def test_other_keys_are_refused_naming_the_file_and_the_key(tmp_path: Path, kind: str, reason: str) -> None:
    path = write_key(tmp_path, "odd.pem", new_key(kind))
    with pytest.raises(KeyRefused, match=reason) as caught:
        load_signing_key(path)
    assert str(caught.value).startswith("tokens.signing_key_file:")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
    ids=["empty", "text", "bad-pem"],
)
def test_an_unreadable_key_file_is_refused_without_quoting_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content)
    with pytest.raises(KeyRefused, match="not an unencrypted PEM private key") as caught:
        load_signing_key(str(path))
    assert "AAAA" not in str(caught.value)


def test_an_encrypted_key_is_refused(tmp_path: Path) -> None:
    private = new_key("ec")
    path = tmp_path / "key.pem"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(KeyRefused, match="unencrypted"):
        load_signing_key(str(path))


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyRefused, match="tokens.signing_key_file: cannot read .*absent.pem"):
        load_signing_key(str(tmp_path / "absent.pem"))


def test_previous_keys_are_published_from_private_or_public_pem_after_the_current_one(tmp_path: Path) -> None:
    current = load_signing_key(write_key(tmp_path, "current.pem", new_key("ec")))
    old_private = new_key("rsa")
    old_ec = new_key("ec")
    previous = [
        load_key_file(write_key(tmp_path, "old-rsa.pem", old_private), "tokens.previous_key_files[0]"),
        load_key_file(write_key(tmp_path, "old-ec.pub", old_ec, public=True), "tokens.previous_key_files[1]"),
    ]
    published = PublishedKeys.of(current, previous)
    document = json.loads(published.document)
    assert [k["kid"] for k in document["keys"]] == [current.kid, previous[0]["kid"], previous[1]["kid"]]
    assert [k["alg"] for k in document["keys"]] == ["ES256", "RS256", "ES256"]
    for jwk in document["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & jwk.keys()  # public members only
        assert jwk["use"] == "sig"


def test_a_previous_key_that_cannot_sign_is_refused_naming_its_entry(tmp_path: Path) -> None:
    with pytest.raises(KeyRefused, match=r"tokens.previous_key_files\[2\]: an RSA key of 1024 bits"):
        load_key_file(write_key(tmp_path, "old.pem", new_key("rsa-1024")), "tokens.previous_key_files[2]")
