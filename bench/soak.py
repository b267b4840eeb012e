"""Bounded soak: a steady mixed load through the gateway on loopback, its resources sampled as it runs.

    python -m bench.soak [--seconds 180] [--report docs/SOAK.md] [--json PATH]

Starts the bench peers (`bench.peers`: upstream, static JWKS, gateway), then for `--seconds` runs,
at fixed concurrency and rates so the load is the same from start to end:

- small JSON requests (`threads.list`, bearer token), paced to `JSON_RATE` per second;
- complete streams (`STREAMS` at a time, each `STREAM_EVENTS` events over about a second);
- streams the client drops after the first event and a random pause (`DISCONNECTERS` at a time);
- bad tokens (tampered, expired, wrong audience, garbage, none), paced to `BAD_TOKEN_RATE`: each
  must be a 401.

Every `--interval` seconds it samples the gateway process: RSS (KiB), open file descriptors, TCP
connections ESTABLISHED to the upstream, and open streams (the gateway's own gauge). After the
load it waits for the gateway to settle and samples once more.

Flat means, comparing the last third of the samples with the first third (after a warm-up of
`WARMUP_FRACTION` of the run): mean RSS within `RSS_TOLERANCE`, mean fds and upstream connections
within `FD_BAND` and `CONNECTION_BAND`; and after the load, no open stream and fds and connections
back within the pools' idle keep-alive allowance of where they were before it. The report goes to
`--report` (a Markdown table: the first sample, every n-th, the last; then the verdict); `--json`
writes every figure for tests. Exit status 1 if not flat or if any request failed unexpectedly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import random
import statistics
import sys
import textwrap
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from bench.__main__ import machine
from bench.load import StreamStats, one_stream
from bench.measure import cpu_seconds, established_to, fd_count, rss_kib
from bench.peers import AUDIENCE, ISSUER, Peer, Signer, peers

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SECONDS = 180.0
SAMPLE_SECONDS = 2.0
JSON_RATE = 150.0
JSON_WORKERS = 4
STREAMS = 8
STREAM_EVENTS = 40
STREAM_INTERVAL_MS = 25.0
DISCONNECTERS = 4
BAD_TOKEN_RATE = 10.0
CALL_TIMEOUT = 30.0
WARMUP_FRACTION = 0.2
RSS_TOLERANCE = 0.10
FD_BAND = 16
CONNECTION_BAND = 16
# After the load the gateway may keep idle keep-alive connections to the upstream, up to
# `upstream.max_connections` (8) for JSON and `upstream.stream_keepalive` (16) for streams.
IDLE_KEEPALIVE = 8 + 16
SETTLE_SECONDS = 10.0
TABLE_ROWS = 12


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    upstream_connections: int
    open_streams: int
    requests: int


@dataclass
class Tally:
    """Answers by kind: `ok` as expected (a 401 for a bad token), `errors` anything else."""

    ok: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    events: int = 0

    @property
    def requests(self) -> int:
        return self.ok.total() + self.errors.total()


@dataclass
class Verdict:
    flat: bool
    checks: dict[str, bool]
    first_third: dict[str, float]
    last_third: dict[str, float]


class Soak:
    """The load and the sampler on one event loop, each loop bounded by the deadline."""

    def __init__(self, gateway: Peer, upstream: Peer, signer: Signer, seconds: float, interval: float) -> None:
        self.gateway, self.upstream_port = gateway, int(upstream.url.rsplit(":", 1)[1])
        self.host, port = gateway.url.removeprefix("http://").split(":")
        self.port = int(port)
        self.token = signer.token("soak-user")
        self.bad_tokens = bad_tokens(signer, self.token)
        self.seconds, self.interval = seconds, interval
        self.tally = Tally()
        self.samples: list[Sample] = []
        self.started = 0.0

    def sample(self, metrics: str) -> Sample:
        pids = self.gateway.pids
        return Sample(
            t=round(time.monotonic() - self.started, 1),
            rss_kib=rss_kib(pids),
            fds=fd_count(pids),
            upstream_connections=established_to(self.upstream_port),
            open_streams=open_streams(metrics),
            requests=self.tally.requests,
        )

    async def run(self) -> tuple[Sample, Sample]:
        """The load; the samples before it and after it settled (those during it go to `samples`)."""
        limits = httpx.Limits(max_connections=JSON_WORKERS + 2, max_keepalive_connections=JSON_WORKERS + 2)
        async with httpx.AsyncClient(base_url=self.gateway.url, trust_env=False, limits=limits, timeout=10) as client:
            self.started = time.monotonic()
            before = self.sample(await metrics_text(client))
            deadline = self.started + self.seconds
            workers = [
                *(
                    self._posts(client, deadline, JSON_WORKERS / JSON_RATE, [self.token], 200)
                    for _ in range(JSON_WORKERS)
                ),
                self._posts(client, deadline, 1 / BAD_TOKEN_RATE, self.bad_tokens, 401),
                *(self._streams(deadline) for _ in range(STREAMS)),
                *(self._disconnects(deadline) for _ in range(DISCONNECTERS)),
                self._sampler(client, deadline),
            ]
            tasks = [asyncio.ensure_future(worker) for worker in workers]
            _, pending = await asyncio.wait(tasks, timeout=self.seconds + CALL_TIMEOUT + 10)
            for task in pending:
                task.cancel()
                self.tally.errors["worker did not stop"] += 1
            return before, await self._settled(client, before)

    async def _settled(self, client: httpx.AsyncClient, before: Sample) -> Sample:
        """The first sample, within `SETTLE_SECONDS`, with no open stream and fds and connections back."""
        ends = time.monotonic() + SETTLE_SECONDS
        while True:
            after = self.sample(await metrics_text(client))
            if returned(before, after) or time.monotonic() > ends:
                return after
            await asyncio.sleep(0.5)

    async def _sampler(self, client: httpx.AsyncClient, deadline: float) -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(self.interval, max(0.0, deadline - time.monotonic())))
            self.samples.append(self.sample(await metrics_text(client)))

    async def _posts(
        self, client: httpx.AsyncClient, deadline: float, period: float, tokens: list[str], expect: int
    ) -> None:
        """`threads.list` every `period` seconds, cycling through `tokens` ("" sends none)."""
        kind = "json" if expect == 200 else "bad token"
        body = {"type": "threads.list", "params": {}, "metadata": {"client": "soak"}}
        next_at = time.monotonic() + random.uniform(0, period)
        for token in itertools.cycle(tokens):
            if next_at >= deadline:
                return
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            headers = {"authorization": f"Bearer {token}"} if token else {}
            try:
                status: int | str = (await client.post("/chatkit", json=body, headers=headers)).status_code
            except httpx.HTTPError as error:
                status = type(error).__name__
            if status == expect:
                self.tally.ok[f"{kind} {expect}"] += 1
            else:
                self.tally.errors[f"{kind}: {status}"] += 1

    async def _streams(self, deadline: float) -> None:
        body = {"type": "threads.create", "params": {"events": STREAM_EVENTS, "interval_ms": STREAM_INTERVAL_MS}}
        while time.monotonic() < deadline:
            stats = StreamStats()
            if await self._stream(body, stats, None):
                if stats.failures or stats.events != STREAM_EVENTS:
                    self.tally.errors["stream: failed or short"] += 1
                else:
                    self.tally.ok["stream complete"] += 1
                    self.tally.events += stats.events

    async def _disconnects(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while time.monotonic() < deadline:
            # Long enough to be dropped mid-stream, short enough that the bench upstream (which does
            # not stop sending when its client leaves) ends each one within seconds.
            params = {"idle": True} if random.random() < 0.3 else {"events": 200, "interval_ms": 10.0}
            stats, hold = StreamStats(), asyncio.Event()
            loop.call_later(random.uniform(0.0, 0.5), hold.set)
            if await self._stream({"type": "threads.create", "params": params}, stats, hold):
                if stats.failures or stats.events < 1:
                    self.tally.errors["dropped stream: no first event"] += 1
                else:
                    self.tally.ok["stream dropped"] += 1
            await asyncio.sleep(0.1)

    async def _stream(self, body: dict[str, Any], stats: StreamStats, hold: asyncio.Event | None) -> bool:
        try:
            await asyncio.wait_for(one_stream(self.host, self.port, self.token, body, stats, hold), CALL_TIMEOUT)
        except TimeoutError:
            self.tally.errors["stream: timeout"] += 1
            return False
        return True


def bad_tokens(signer: Signer, good: str) -> list[str]:
    """Tokens the gateway must refuse with 401; "" stands for no credentials at all."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "soak-user", "iat": now, "exp": now + 7200}
    head, payload, signature = good.split(".")
    tampered = signature[:20] + ("A" if signature[20] != "A" else "B") + signature[21:]
    return [
        f"{head}.{payload}.{tampered}",
        signed(signer, {**claims, "iat": now - 7200, "exp": now - 3600}),
        signed(signer, {**claims, "aud": "someone-else"}),
        "not-a-token",
        "e30.e30.e30",
        "",
    ]


def signed(signer: Signer, claims: dict[str, Any]) -> str:
    """A token with `claims`, signed like `Signer.token` (same key, same header)."""
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    signature = signer.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def metrics_text(client: httpx.AsyncClient) -> str:
    try:
        return (await client.get("/metrics")).text
    except httpx.HTTPError:
        return ""


def open_streams(metrics: str) -> int:
    for line in metrics.splitlines():
        if line.startswith("chatkit_gateway_open_streams "):
            return int(float(line.split()[1]))
    return -1


def returned(before: Sample, after: Sample) -> bool:
    """Whether the gateway is back to where it was before the load, idle keep-alive allowed."""
    return (
        after.open_streams == 0
        and after.fds <= before.fds + IDLE_KEEPALIVE
        and after.upstream_connections <= before.upstream_connections + IDLE_KEEPALIVE
    )


def judge(samples: list[Sample], seconds: float, before: Sample, after: Sample) -> Verdict:
    steady = [sample for sample in samples if sample.t >= seconds * WARMUP_FRACTION]
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]

    def means(part: list[Sample]) -> dict[str, float]:
        if not part:
            return {"rss_kib": math.nan, "fds": math.nan, "upstream_connections": math.nan}
        return {
            "rss_kib": statistics.fmean(s.rss_kib for s in part),
            "fds": statistics.fmean(s.fds for s in part),
            "upstream_connections": statistics.fmean(s.upstream_connections for s in part),
        }

    a, b = means(first), means(last)
    checks = {
        "enough samples": len(steady) >= 3,
        "rss": abs(b["rss_kib"] - a["rss_kib"]) <= RSS_TOLERANCE * a["rss_kib"],
        "fds": abs(b["fds"] - a["fds"]) <= FD_BAND,
        "upstream connections": abs(b["upstream_connections"] - a["upstream_connections"]) <= CONNECTION_BAND,
        "back to baseline after the load": returned(before, after),
    }
    return Verdict(all(checks.values()), checks, a, b)


def report(
    samples: list[Sample], before: Sample, after: Sample, tally: Tally, verdict: Verdict, seconds: float, cpu: float
) -> str:
    step = max(1, math.ceil(len(samples) / TABLE_ROWS))
    shown = [sample for n, sample in enumerate(samples) if n % step == 0 or n == len(samples) - 1]
    a, b = verdict.first_third, verdict.last_third
    rss_change = (b["rss_kib"] - a["rss_kib"]) / a["rss_kib"] * 100 if a["rss_kib"] else math.nan
    setup = (
        "The gateway as users run it (`chatkit-gateway serve`, RS256 bearer tokens, metadata injection) in "
        "front of `bench/upstream.py`, all on 127.0.0.1, under a steady mixed load for the whole run: small "
        f"JSON requests at {JSON_RATE:g}/s, {STREAMS} complete streams at a time ({STREAM_EVENTS} events "
        f"each), {DISCONNECTERS} clients that drop their stream after its first event, and bad tokens "
        f"(tampered, expired, wrong audience, garbage, none) at {BAD_TOKEN_RATE:g}/s. Every "
        f"{SAMPLE_SECONDS:g} s the gateway's RSS, fds, ESTABLISHED connections to the upstream and open "
        "streams (its `chatkit_gateway_open_streams` gauge) are sampled. Reproduce with `make soak`."
    )
    answered = ", ".join(f"{n:,} {kind}" for kind, n in sorted(tally.ok.items()))
    unexpected = ", ".join(f"{n} {kind}" for kind, n in tally.errors.most_common()) or "none"
    checks = verdict.checks
    lines = [
        "# Soak",
        "",
        f"Latest run (`python -m bench.soak --seconds {seconds:g}`) on {machine()}, {time.strftime('%Y-%m-%d')}.",
        "",
        textwrap.fill(setup, 100),
        "",
        "| t (s) | RSS (KiB) | fds | upstream connections | open streams | requests so far |",
        "| --- | --- | --- | --- | --- | --- |",
        _row("before", before),
        *(_row(f"{s.t:g}", s) for s in shown),
        _row("after, settled", after),
        "",
        textwrap.fill(
            f"Answered as expected: {answered} ({tally.events:,} events in complete streams). Unexpected: "
            f"{unexpected}. Gateway CPU: {cpu / seconds * 100:.0f} % of one core on average.",
            100,
        ),
        "",
        f"## Verdict: {'flat' if verdict.flat else 'NOT flat'}",
        "",
        f"After a warm-up of the first {WARMUP_FRACTION:.0%} of the run, the last third of the samples against "
        "the first:",
        "",
        f"- RSS: {a['rss_kib']:,.0f} → {b['rss_kib']:,.0f} KiB ({rss_change:+.1f} %, limit ±{RSS_TOLERANCE:.0%}): "
        f"{_ok(checks['rss'])}",
        f"- fds: {a['fds']:.1f} → {b['fds']:.1f} (limit ±{FD_BAND}): {_ok(checks['fds'])}",
        f"- upstream connections: {a['upstream_connections']:.1f} → {b['upstream_connections']:.1f} "
        f"(limit ±{CONNECTION_BAND}): {_ok(checks['upstream connections'])}",
        f"- after the load: {after.open_streams} open streams; fds {before.fds} → {after.fds} and upstream "
        f"connections {before.upstream_connections} → {after.upstream_connections} (idle keep-alive allowance "
        f"{IDLE_KEEPALIVE}): {_ok(checks['back to baseline after the load'])}",
        "",
    ]
    return "\n".join(lines)


def _row(label: str, s: Sample) -> str:
    return f"| {label} | {s.rss_kib:,} | {s.fds} | {s.upstream_connections} | {s.open_streams} | {s.requests:,} |"


def _ok(passed: bool) -> str:
    return "ok" if passed else "**failed**"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="load duration (default 180)")
    parser.add_argument("--interval", type=float, default=SAMPLE_SECONDS, help="seconds between samples")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "SOAK.md", help="Markdown report")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON")
    args = parser.parse_args(argv)
    with peers(with_nginx=False) as (upstream, gateway, _, signer):
        soak = Soak(gateway, upstream, signer, args.seconds, args.interval)
        cpu_before = cpu_seconds(gateway.pids)
        before, after = uvloop.run(soak.run())
        cpu = cpu_seconds(gateway.pids) - cpu_before
    verdict = judge(soak.samples, args.seconds, before, after)
    tally = soak.tally
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report(soak.samples, before, after, tally, verdict, args.seconds, cpu))
    if args.json is not None:
        figures = {
            "seconds": args.seconds,
            "before": asdict(before),
            "after": asdict(after),
            "samples": [asdict(sample) for sample in soak.samples],
            "tally": {"ok": dict(tally.ok), "errors": dict(tally.errors), "events": tally.events},
            "verdict": asdict(verdict),
        }
        args.json.write_text(json.dumps(figures, indent=2))
    errors = tally.errors.total()
    print(f"soak: {'flat' if verdict.flat else 'NOT flat'}, {errors} unexpected results; report in {args.report}")
    return 0 if verdict.flat and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
