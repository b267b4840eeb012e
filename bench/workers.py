"""Throughput with several workers (`server.workers`) against one, in the same run.

A second gateway is started from the same config with `server.workers = 2`; wrk loads each in
turn, alternating (1, 2, 2, 1, ...), and the figure per subject is the median over the rounds.
Besides requests/s, each row says how many cores the gateway's processes used (their CPU time
over the wall time): on a machine where the load generator and the upstream share the cores
with the gateway, that shows what a second worker had left to use. It also says what the whole
machine spent per request (gateway, upstream and wrk together) and so the most requests/s its
cores could carry at all (*ceiling*: cores ÷ that CPU): where the load generator and the upstream
take their share of the same cores, a second worker cannot double anything, and the honest
question is how close it gets to that ceiling, and whether a worker's CPU per request grows when
another runs beside it (it would, with contention between them).
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass

from bench import measure, peers


@dataclass(frozen=True)
class WorkersFigure:
    workers: int
    connections: int
    requests_per_second: float
    cores_used: float
    cpu_us_per_request: float
    p99_ms: float
    machine_cpu_us_per_request: float  # gateway + upstream + wrk


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_workers(
    gateway: peers.Peer,
    upstream: peers.Peer,
    config_args: list[str],
    token: str,
    *,
    connections: tuple[int, ...],
    seconds: float,
    rounds: int,
) -> list[WorkersFigure]:
    port = peers.free_port()
    env = peers.gateway_env({"CHATKIT_GATEWAY__SERVER__WORKERS": "2"})
    url = f"http://127.0.0.1:{port}"
    two = peers.start("gateway-2-workers", [*config_args, "--port", str(port)], url, "/readyz", env=env)
    try:
        subjects = {1: gateway, 2: two}
        for peer in subjects.values():
            measure.wrk(f"{peer.url}/chatkit", token, connections=4, seconds=1, pids=peer.pids)  # warm-up
        samples: dict[tuple[int, int], list[tuple[float, float, float, float, float]]] = {}
        for round_ in range(rounds):
            order = (1, 2) if round_ % 2 == 0 else (2, 1)
            for c in connections:
                for workers in order:
                    peer = subjects[workers]
                    pids = peer.pids
                    before, started = measure.cpu_seconds(pids), time.monotonic()
                    upstream_before, wrk_before = measure.cpu_seconds(upstream.pids), children_cpu_seconds()
                    result = measure.wrk(f"{peer.url}/chatkit", token, connections=c, seconds=seconds, pids=pids)
                    cores = (measure.cpu_seconds(pids) - before) / (time.monotonic() - started)
                    others = measure.cpu_seconds(upstream.pids) - upstream_before + children_cpu_seconds() - wrk_before
                    machine = result.cpu_us_per_request + others / max(result.requests, 1) * 1e6
                    sample = (result.requests_per_second, cores, result.cpu_us_per_request, result.p99_ms, machine)
                    samples.setdefault((workers, c), []).append(sample)
        return [
            WorkersFigure(
                workers,
                c,
                *(statistics.median(sample[i] for sample in samples[(workers, c)]) for i in range(5)),
            )
            for c in connections
            for workers in (1, 2)
        ]
    finally:
        peers.stop(two)


def render(figures: list[WorkersFigure], cores: int | None) -> list[str]:
    by_key = {(f.workers, f.connections): f for f in figures}
    ncores = cores or 1
    out = [
        f"The same gateway config with `server.workers = 1` and `= 2`, wrk on the same {cores} cores as",
        "the gateway and the upstream (no spare core to pin the load generator to), alternating runs,",
        "medians. *Cores used* is the gateway's CPU time (all its processes) over the wall time;",
        "*machine CPU* adds the upstream's and wrk's CPU per request; *ceiling* is the most requests/s",
        f"the {cores} cores could carry at that machine CPU per request, whatever the gateway did.",
        "",
        "| workers | connections | requests/s | × 1 worker | cores used | CPU µs/request | machine CPU µs/request "
        "| share of ceiling | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        one = by_key[(1, f.connections)].requests_per_second
        ceiling = ncores * 1e6 / f.machine_cpu_us_per_request
        out.append(
            f"| {f.workers} | {f.connections} | {f.requests_per_second:,.0f} | {f.requests_per_second / one:.2f}× "
            f"| {f.cores_used:.2f} | {f.cpu_us_per_request:,.0f} | {f.machine_cpu_us_per_request:,.0f} "
            f"| {f.requests_per_second / ceiling:.0%} | {f.p99_ms:.2f} |"
        )
    out += [
        "",
        "With a free core for each worker (the load generator and the upstream elsewhere), throughput",
        "would follow the gateway's CPU per request: N workers serve N ÷ (CPU µs per request with N)",
        "against 1 ÷ (CPU µs per request with 1). From the rows above, as a projection, not a measurement:",
        "",
    ]
    for f in figures:
        if f.workers > 1:
            one_cpu = by_key[(1, f.connections)].cpu_us_per_request
            projected = f.workers * one_cpu / f.cpu_us_per_request
            out.append(f"- c={f.connections}: {f.workers} workers ≈ {projected:.2f}× one worker")
    return out
