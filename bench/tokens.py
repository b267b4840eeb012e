"""The price of `[tokens]`: CPU per request with an assertion and two tool tokens, against none."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bench import measure, peers
from gateway.tokens.signing import load_signing_key

RESOURCES = [
    {"name": "crm", "audience": "https://mcp.bench.invalid/crm", "scopes": ["crm.read"]},
    {"name": "billing", "audience": "https://mcp.bench.invalid/billing", "scopes": ["billing.read"]},
]
DESCRIPTION = """\
Three gateways in the same run, in front of the same upstream, each measured with the same wrk
load (a small authenticated JSON request, c=16), rounds interleaved so the machine's drift falls
on all three alike:

- **off**: the run's gateway configuration without `[tokens]`;
- **cached**: an ES256 key, `assertion_audience` and two minted resources: every request signs one
  assertion (it is bound to the request's body) and finds its two tool tokens in the cache;
- **uncached**: the same with `tokens.cache_size = 1`, so both tool tokens are signed on every
  request (the first request of every user, or a user whose tokens passed half their lifetime).

Plus, in-process, the signing cost per token with each key type."""
CONCURRENCY = 16
ROUNDS = 3
SIGN_SAMPLES = 2000


def _write_key(folder: Path, name: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    path = folder / name
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(path)


def _start(folder: Path, base: dict[str, Any], name: str, tokens: dict[str, Any] | None) -> peers.Peer:
    port = peers.free_port()
    config = {**base, "server": {**base["server"], "port": port}}
    if tokens is not None:
        config["tokens"] = tokens
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    args = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
    return peers.start(name, args, f"http://127.0.0.1:{port}", "/readyz", env=peers.gateway_env())


def signing_us(folder: Path) -> dict[str, float]:
    """Median µs to sign one assertion-sized token, per key type (in-process)."""
    claims = {
        "iss": "https://chat.bench.invalid",
        "aud": "chatkit-backend",
        "sub": "bench-user",
        "iat": 1,
        "exp": 61,
        "jti": "0" * 32,
        "name": "Bench",
        "idp_iss": peers.ISSUER,
        "chatkit": {"requestId": "0" * 32, "bodySha256": "A" * 43},
    }
    figures = {}
    keys = {"ES256": ec.generate_private_key(ec.SECP256R1()), "RS256": rsa.generate_private_key(65537, 2048)}
    for alg, private in keys.items():
        key = load_signing_key(_write_key(folder, f"{alg}.pem", private))
        samples = []
        for _ in range(SIGN_SAMPLES):
            started = time.perf_counter()
            key.sign(claims)
            samples.append((time.perf_counter() - started) * 1e6)
        figures[alg] = statistics.median(samples)
    return figures


def run(gateway: peers.Peer, token: str, seconds: float, *, rounds: int = ROUNDS) -> list[str]:
    """Markdown lines: CPU per request off / cached / uncached, and the signing cost per key type."""
    base = tomllib.loads(Path(gateway.process.args[-1]).read_text())  # type: ignore[index]
    with tempfile.TemporaryDirectory(prefix="chatkit-gateway-bench-tokens-") as name:
        folder = Path(name)
        key_file = _write_key(folder, "signing.pem", ec.generate_private_key(ec.SECP256R1()))
        tokens = {
            "issuer": "https://chat.bench.invalid",
            "signing_key_file": key_file,
            "assertion_audience": "chatkit-backend",
            "resources": RESOURCES,
        }
        # Three fresh gateways started alike (the run's own has served every other benchmark).
        off = _start(folder, base, "gateway-tokens-off", None)
        cached = _start(folder, base, "gateway-tokens-cached", tokens)
        try:
            uncached = _start(folder, base, "gateway-tokens-uncached", {**tokens, "cache_size": 1})
            try:
                subjects = {"off": off, "cached": cached, "uncached": uncached}
                cpu: dict[str, list[float]] = {label: [] for label in subjects}
                for _ in range(rounds):
                    for label, peer in subjects.items():
                        result = measure.wrk(
                            f"{peer.url}/chatkit", token, connections=CONCURRENCY, seconds=seconds, pids=peer.pids
                        )
                        if result.errors:
                            raise RuntimeError(f"{label}: {result.errors} failed requests")
                        cpu[label].append(result.cpu_us_per_request)
            finally:
                peers.stop(uncached)
        finally:
            peers.stop(cached)
            peers.stop(off)
        signing = signing_us(folder)
    baseline = statistics.median(cpu["off"])
    lines = [
        "| gateway | CPU µs per request (c=16, median of rounds) | added | × off |",
        "| --- | --- | --- | --- |",
    ]
    labels = {
        "off": "`[tokens]` off",
        "cached": "assertion + 2 tool tokens, tool tokens cached",
        "uncached": "assertion + 2 tool tokens, all 3 signed per request",
    }
    for label, text in labels.items():
        value = statistics.median(cpu[label])
        lines.append(f"| {text} | {value:,.0f} | {value - baseline:+,.0f} | {value / baseline:.2f}× |")
    lines += [
        "",
        "| key | µs to sign one assertion (in-process, median) |",
        "| --- | --- |",
        *(f"| {alg} | {us:.1f} |" for alg, us in signing.items()),
    ]
    return lines
