"""One benchmark run: every figure of docs/BENCHMARKS.md, measured in one go against the same peers."""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import features, load, measure, observe, ownership, peers, storm, verify, workers
from bench import tokens as bench_tokens


@dataclass(frozen=True)
class Plan:
    json_concurrency: tuple[int, ...]
    json_seconds: float
    sse: tuple[tuple[int, int, float], ...]  # (streams, events per stream, interval ms)
    storms: tuple[int, ...]
    verify_samples: int
    first_request_samples: int
    first_request_rounds: int
    workers_concurrency: tuple[int, ...] = (16, 64)
    workers_rounds: int = 3
    storm_to_limit: bool = True  # also the most streams one worker can hold here (`storm.max_streams_per_worker`)
    two_workers_storm: int = 10_000
    side_by_side_rounds: int = 3  # rounds of the tables whose gateways take turns (tokens, ownership)


# The single stream runs long enough (1,000 events) for its CPU time to rise above /proc's 10 ms tick.
FULL = Plan((1, 16, 64), 5.0, ((1, 1000, 5.0), (100, 100, 20.0), (300, 60, 50.0)), (1000, 5000), 2000, 10, 5)
QUICK = Plan((1, 4), 1.0, ((1, 10, 10.0), (5, 10, 20.0)), (20,), 20, 3, 1, (4,), 1, False, 20, 1)
TWO_WORKERS = "gateway, 2 workers"
PYMALLOC = "gateway, Python's own allocator"


@dataclass
class Results:
    json: dict[str, dict[int, measure.WrkResult]] = field(default_factory=dict)
    sse: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    storms: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    verify: verify.VerifyFigures | None = None
    observe: observe.ObserveFigures | None = None
    first_request: dict[str, float] = field(default_factory=dict)
    workers: list[workers.WorkersFigure] = field(default_factory=list)
    features: list[features.FeatureCost] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    ownership: list[str] = field(default_factory=list)


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def targets(
    upstream: peers.Peer, gateway: peers.Peer, nginx: peers.Peer | None
) -> list[tuple[str, peers.Peer, list[int]]]:
    """(name, peer to send to, processes whose CPU and memory are the subject's)."""
    result = [("direct", upstream, upstream.pids), ("gateway", gateway, gateway.pids)]
    if nginx is not None:
        result.insert(1, ("nginx", nginx, nginx.pids))
    return result


def run_json(plan: Plan, subjects: list[tuple[str, peers.Peer, list[int]]], token: str, results: Results) -> None:
    for name, peer, pids in subjects:
        results.json[name] = {}
        measure.wrk(f"{peer.url}/chatkit", token, connections=4, seconds=1, pids=pids)  # warm-up
        for connections in plan.json_concurrency:
            results.json[name][connections] = measure.wrk(
                f"{peer.url}/chatkit", token, connections=connections, seconds=plan.json_seconds, pids=pids
            )


def run_sse(plan: Plan, subjects: list[tuple[str, peers.Peer, list[int]]], token: str, results: Results) -> None:
    for name, peer, pids in subjects:
        results.sse[name] = {}
        port = int(peer.url.rsplit(":", 1)[1])
        for streams, events, interval in plan.sse:
            before = measure.cpu_seconds(pids)
            stats = load.run_streams("127.0.0.1", port, token, streams=streams, events=events, interval_ms=interval)
            cpu = measure.cpu_seconds(pids) - before
            results.sse[name][streams] = {
                "p50_ms": percentile(stats.latencies_ns, 0.50),
                "p99_ms": percentile(stats.latencies_ns, 0.99),
                "open_p99_ms": percentile(stats.once_all_open(), 0.99),
                "events": stats.events,
                "failures": stats.failures,
                "cpu_us_per_event": cpu / max(stats.events, 1) * 1e6,
            }


def storm_counts(plan: Plan, subject: str) -> tuple[int, ...]:
    """The plan's storms, and the most streams one worker can hold under this machine's fd limit.

    Not for nginx: at that count its one worker runs out of `worker_connections` slots (it warns
    "worker_connections are not enough, reusing connections") and refuses a few hundred streams."""
    if not plan.storm_to_limit or subject == "nginx":
        return plan.storms
    return (*plan.storms, storm.max_streams_per_worker())


def run_storms(
    plan: Plan,
    subjects: list[tuple[str, peers.Peer, list[int]]],
    upstream_port: int,
    token: str,
    config_args: list[str],
    results: Results,
) -> None:
    """Every subject at each count; then `server.workers = 2` at `plan.two_workers_storm` (more
    streams than one worker can hold here: docs/BENCHMARKS.md, "Many open streams").

    Each gateway storm runs in a gateway started for it: in a process that held streams before,
    the new ones reuse the memory the earlier ones left (`run_storm`), and their RSS per stream
    would read low. direct and nginx run their counts in turn in one process each."""
    for name, peer, pids in subjects:
        results.storms[name] = {}
        counts = storm_counts(plan, name)
        for streams in counts:
            if name == "gateway":
                figures = _fresh_gateway_storm(config_args, {}, upstream_port, token, streams)
                if streams == counts[-1]:  # the same storm on pymalloc, for its memory back
                    results.storms[PYMALLOC] = {
                        streams: _fresh_gateway_storm(config_args, {}, upstream_port, token, streams, jemalloc=False)
                    }
            else:
                port = int(peer.url.rsplit(":", 1)[1])
                figures = storm.run_storm(pids, port, upstream_port, token, streams)
            results.storms[name][streams] = figures
    two = {"CHATKIT_GATEWAY__SERVER__WORKERS": "2"}
    streams = plan.two_workers_storm
    results.storms[TWO_WORKERS] = {streams: _fresh_gateway_storm(config_args, two, upstream_port, token, streams)}


def _fresh_gateway_storm(
    config_args: list[str], env: dict[str, str], upstream_port: int, token: str, streams: int, *, jemalloc: bool = True
) -> dict[str, float]:
    port = peers.free_port()
    args = [*config_args, "--port", str(port)]
    env = peers.gateway_env(env, jemalloc=jemalloc)
    gateway = peers.start("gateway-storm", args, f"http://127.0.0.1:{port}", "/readyz", env=env)
    try:
        return storm.run_storm(gateway.pids, port, upstream_port, token, streams)
    finally:
        peers.stop(gateway)


IDLE_BEFORE_REQUEST = 0.2


def run_first_request(plan: Plan, config_args: list[str], signer: peers.Signer, results: Results) -> None:
    """Fresh gateways: the first request after start against later ones (a new connection each).

    The first request comes after the gateway has sat idle a moment (it just reported ready), and
    an idle process answers slower than a busy one (cold caches, a sleeping core), so the fair
    steady state is requests after the same idle gap; back-to-back requests are shown too. Every
    request is a new user's (its token verified for the first time, as the first request's is).
    Medians over several fresh starts.
    """
    body = json.dumps({"type": "threads.list", "params": {}})
    firsts, paced, back_to_back = [], [], []
    for _ in range(plan.first_request_rounds):
        tokens = [signer.token(sub=f"first-{n}") for n in range(2 * plan.first_request_samples + 1)]
        port = peers.free_port()
        args = [*config_args, "--port", str(port)]
        peer = peers.start("gateway-cold", args, f"http://127.0.0.1:{port}", "/readyz", env=peers.gateway_env())
        try:

            def once(token: str, port: int = port, idle: float = 0.0) -> float:
                # http.client: a new connection per request, and next to no client-side cost.
                time.sleep(idle)
                started = time.perf_counter()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
                connection.request("POST", "/chatkit", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                connection.close()
                assert response.status == 200
                return (time.perf_counter() - started) * 1000

            samples = plan.first_request_samples
            firsts.append(once(tokens[0], idle=IDLE_BEFORE_REQUEST))
            paced.append(statistics.median(once(t, idle=IDLE_BEFORE_REQUEST) for t in tokens[1 : samples + 1]))
            back_to_back.append(statistics.median(once(t) for t in tokens[samples + 1 :]))
        finally:
            peers.stop(peer)
    results.first_request = {
        "first_ms": statistics.median(firsts),
        "steady_ms": statistics.median(paced),
        "steady_back_to_back_ms": statistics.median(back_to_back),
    }


def run(plan: Plan) -> Results:
    storm.raise_own_fd_limit()  # the storms' clients run in this process, one fd each
    results = Results()
    with peers.peers() as (upstream, gateway, nginx, signer):
        token = signer.token()
        subjects = targets(upstream, gateway, nginx)
        run_json(plan, subjects, token, results)
        run_sse(plan, subjects, token, results)
        config = Path(gateway.process.args[-1])  # type: ignore[index]
        config_args = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        run_storms(plan, subjects, int(upstream.url.rsplit(":", 1)[1]), token, config_args, results)
        results.tokens = bench_tokens.run(gateway, token, plan.json_seconds, rounds=plan.side_by_side_rounds)
        results.ownership = ownership.run(
            gateway, signer, seconds=max(1.0, plan.json_seconds / 2), rounds=plan.side_by_side_rounds
        )
        results.workers = workers.measure_workers(
            gateway,
            upstream,
            config_args,
            token,
            connections=plan.workers_concurrency,
            seconds=plan.json_seconds,
            rounds=plan.workers_rounds,
        )
        run_first_request(plan, config_args, signer, results)
        quick = plan is QUICK
        results.features = features.run(features.FEATURES, config, token, seconds=plan.json_seconds, quick=quick)
    results.verify = verify.run(plan.verify_samples)
    results.observe = observe.run(plan.verify_samples * 10)
    return results


def wrk_available() -> bool:
    try:
        subprocess.run(["wrk", "--version"], capture_output=True, check=False)
    except FileNotFoundError:
        return False
    return True
