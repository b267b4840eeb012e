"""`python -m bench [--quick]`: run the benchmarks and write their figures to docs/BENCHMARKS.md."""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

from bench import run as bench_run
from bench import storm as bench_storm
from bench import tokens as bench_tokens
from bench import workers as bench_workers

IDLE_MS = int(bench_run.IDLE_BEFORE_REQUEST * 1000)

ROOT = Path(__file__).resolve().parents[1]
DESIGN_CHOICES = Path(__file__).with_name("design_choices.md")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {system}"


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def ratio(value: float, base: float | None) -> str:
    if not base or math.isnan(base) or math.isnan(value):
        return "–"
    return f"{value / base:.2f}×"


def table(*columns: str) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


INTRO = """\
Everything runs on 127.0.0.1 in one run, so the ratios hold even where the absolute figures vary
with the machine: **direct** is the client talking to the upstream itself, **nginx** is nginx with
one worker and `proxy_buffering off` (the proxy a user would pick instead), **gateway** is
`chatkit-gateway serve` as users run it (an RS256 bearer token verified, from its cache after the
first request; metadata injected; metrics on; the per-request access log off, like nginx's, with
its cost measured on its own below), on the container image's allocator (jemalloc, with
`PYTHONMALLOC=malloc`: [operations.md](operations.md#memory)). The upstream is
`bench/upstream.py` (raw ASGI under uvicorn).
CPU figures are of the subject's own processes (the upstream's for direct), from `/proc` CPU-time
deltas; this shared 2-core machine varies ±20–30 % between runs, so compare within a run. Reproduce
with `make bench`. Where the gateway's CPU goes (profiles, and the A/B runs behind its performance
choices): [performance.md](performance.md).
"""


def summary(results: bench_run.Results) -> list[str]:
    out = table(
        "subject",
        "CPU µs per small JSON request (c=16)",
        "1,000 streams: all first events",
        "KiB per open stream",
        "CPU µs per relayed SSE event",
    )
    figures: dict[str, list[float]] = {}
    for name, by_c in results.json.items():
        json_cpu = by_c.get(16) or next(iter(by_c.values()))
        storms = results.storms.get(name, {})
        storm = storms.get(1000) or next(iter(storms.values()), {})
        sse = results.sse.get(name, {})
        busiest = sse[max(sse)] if sse else {}
        figures[name] = [
            json_cpu.cpu_us_per_request,
            storm.get("all_first_events_s", math.nan),
            storm.get("kib_per_stream", math.nan),
            busiest.get("cpu_us_per_event", math.nan),
        ]
        json_us, first_s, kib, event_us = figures[name]
        out.append(row(name, fmt(json_us, 0), fmt(first_s, 2) + " s", fmt(kib), fmt(event_us)))
    gateway = figures.get("gateway")
    for base in ("nginx", "direct"):
        if gateway and base in figures:
            out.append(row(f"gateway ÷ {base}", *(ratio(g, b) for g, b in zip(gateway, figures[base], strict=True))))
    out.append(row("target for the gateway", "≤ 120", "< 1 s", "≤ 16", "≤ 20"))
    by_c = results.json.get("gateway", {})
    if by_c:
        worst = max(by_c, key=lambda c: by_c[c].cpu_us_per_request)
        out += [
            "",
            f"The gateway's JSON cost at its highest across the concurrencies measured below: "
            f"{by_c[worst].cpu_us_per_request:,.0f} µs per request (c={worst}).",
        ]
    return out


def json_section(results: bench_run.Results) -> list[str]:
    out = table("subject", "connections", "requests/s", "× direct", "× nginx", "p50 ms", "p99 ms", "CPU µs/request")
    for name, by_c in results.json.items():
        for c, r in by_c.items():
            nginx = results.json.get("nginx", {}).get(c)
            out.append(
                row(
                    name,
                    c,
                    fmt(r.requests_per_second, 0),
                    ratio(r.requests_per_second, results.json["direct"][c].requests_per_second),
                    ratio(r.requests_per_second, nginx.requests_per_second if nginx else None),
                    fmt(r.p50_ms, 2),
                    fmt(r.p99_ms, 2),
                    fmt(r.cpu_us_per_request, 0),
                )
            )
    return out


def sse_section(results: bench_run.Results) -> list[str]:
    out = table(
        "subject",
        "streams",
        "events",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "added p99 ms",
        "added p99 ms, all open",
        "CPU µs/event",
    )
    for name, by_n in results.sse.items():
        for n, r in by_n.items():
            d = results.sse["direct"][n]
            out.append(
                row(
                    name,
                    n,
                    int(r["events"]),
                    fmt(r["p50_ms"], 2),
                    fmt(r["p99_ms"], 2),
                    fmt(r["p50_ms"] - d["p50_ms"], 2),
                    fmt(r["p99_ms"] - d["p99_ms"], 2),
                    fmt(r["open_p99_ms"] - d["open_p99_ms"], 2),
                    fmt(r["cpu_us_per_event"]),
                )
            )
    return out


def storm_section(results: bench_run.Results) -> list[str]:
    out = table(
        "subject",
        "streams",
        "opened",
        "all first events s",
        "KiB RSS per stream",
        "fds back s",
        "upstream closed s",
        f"RSS kept {bench_storm.MEMORY_BACK_SECONDS:g} s after",
    )
    for name, by_n in results.storms.items():
        for n, r in by_n.items():
            out.append(
                row(
                    name,
                    f"{n:,}",
                    f"{int(r['opened']):,}",
                    fmt(r["all_first_events_s"], 2),
                    fmt(r["kib_per_stream"]),
                    fmt(r["fds_back_s"], 2),
                    fmt(r["upstream_back_s"], 2),
                    "–" if math.isnan(r["rss_kept_share"]) else f"{r['rss_kept_share']:.0%}",
                )
            )
    return out


def storm_intro() -> list[str]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    most = bench_storm.max_streams_per_worker()
    return [
        "Idle streams opened at once (at most 512 connects in flight), each a `threads.create` whose first",
        "event is `thread.created` (so the gateway records each new thread's owner in its SQLite store),",
        "held, then dropped. *RSS kept* is the subject's RSS growth still there",
        f"{bench_storm.MEMORY_BACK_SECONDS:g} s after the clients left, as a share of what the streams took.",
        "Each gateway row is a gateway started for it; direct and nginx run their counts in turn in one",
        "process each, where a storm reuses memory an earlier one left (their later rows read low).",
        "",
        f"The largest count, {most:,}, is what one process can relay under this machine's open-file hard",
        f"limit of {hard:,} (`ulimit -Hn`; it cannot be raised here, even by root): a relayed stream holds",
        f"two fds, the client's and the upstream's, and {bench_storm.FD_MARGIN} are left for the rest. So",
        f"10,000 streams in one worker cannot be opened on this machine; the *{bench_run.TWO_WORKERS}* row",
        "holds them across two (`server.workers = 2`). nginx stops at 5,000: at the largest count its one",
        "worker runs out of `worker_connections` and fails a few hundred streams.",
        "",
        f"The gateway rows run on jemalloc, as the container image runs the gateway; the *{bench_run.PYMALLOC}*",
        "row is the same gateway on pymalloc, which keeps a burst's memory for reuse rather than giving it",
        "back ([operations.md](operations.md#memory)).",
    ]


def render(results: bench_run.Results, quick: bool) -> str:
    when = f"{machine()}, {time.strftime('%Y-%m-%d')}"
    out = ["# Benchmarks", "", f"Figures from the latest `make bench` run on {when}."]
    if quick:
        out.append("**Quick mode: tiny counts, the figures mean nothing.**")
    out += ["", INTRO, "## Summary", "", *summary(results), ""]
    out += ["## Small authenticated JSON POST (wrk, `threads.list`)", "", *json_section(results), ""]
    out += ["## SSE: per-event delivery latency", ""]
    out += [
        "From the upstream's send to the client's read; *added* is over direct at the same load. Each",
        "row opens its streams at once; *all open* counts only the events sent after every stream had its",
        "first event, so it is the relay of open streams, without the queue the burst of openings puts in",
        "front of the first events.",
        "",
    ]
    out += [*sse_section(results), ""]
    out += ["## Many open streams", ""]
    out += [*storm_intro(), ""]
    out += [*storm_section(results), ""]
    if results.workers:
        out += ["## Several workers", "", *bench_workers.render(results.workers, os.cpu_count()), ""]
    first = results.first_request
    if first:
        out += ["## First request after start", ""]
        out += ["A freshly started gateway (ready per `/readyz`), a new user and a new connection per request,"]
        out += [f"medians over several starts. The first request and the steady ones each follow {IDLE_MS} ms of"]
        out += ["idleness (an idle process answers slower: cold caches, a sleeping core); back-to-back for scale.", ""]
        out += table("first request ms", "steady ms (same idle gap)", "ratio", "back-to-back ms", "ratio")
        out += [
            row(
                fmt(first["first_ms"], 2),
                fmt(first["steady_ms"], 2),
                ratio(first["first_ms"], first["steady_ms"]),
                fmt(first["steady_back_to_back_ms"], 2),
                ratio(first["first_ms"], first["steady_back_to_back_ms"]),
            ),
            "",
        ]
    observed = results.observe
    gateway_json = results.json.get("gateway", {})
    if observed and gateway_json:
        per_request = (gateway_json.get(16) or next(iter(gateway_json.values()))).cpu_us_per_request
        out += ["## What logging and metrics cost", ""]
        out += ["One request's JSON access line (formatted and written) and metric updates, timed in-process"]
        out += [
            f"over {observed.samples:,} requests, against the gateway's whole CPU cost per request above (c=16).",
            "",
        ]
        out += table("log line + metrics µs per request", "gateway CPU µs per request", "share")
        out += [
            row(fmt(observed.us_per_request), fmt(per_request, 0), f"{observed.us_per_request / per_request:.1%}"),
            "",
        ]
    if results.features:
        out += ["## What each feature costs", ""]
        out += ["Each feature on, against the same gateway with it off, started and measured next to it"]
        out += ["(`bench/features.py`): CPU µs per small JSON request (wrk) and per relayed SSE event.", ""]
        out += table("feature", "c=16 off", "c=16 on", "added", "c=1 off", "c=1 on", "SSE µs/event off", "on")
        for cost in results.features:
            off, on = cost.off, cost.on
            out.append(
                row(
                    cost.feature.name,
                    fmt(off.json_us.get(16), 0),
                    fmt(on.json_us.get(16), 0),
                    ratio(on.json_us.get(16) or float("nan"), off.json_us.get(16)),
                    fmt(off.json_us.get(1), 0),
                    fmt(on.json_us.get(1), 0),
                    fmt(off.sse_us),
                    fmt(on.sse_us),
                )
            )
        out.append("")
    if results.ownership:
        out += ["## What thread ownership costs", ""]
        out += ["The gateway's CPU per request with `[ownership]` off, on SQLite and on Redis, same run and load;"]
        out += ["the thread named (and listed) is the user's, so the check is answered from the cache.", ""]
        out += [*results.ownership, ""]
    figures = results.verify
    if figures:
        out += ["## Token verification", ""]
        out += [f"Per token, median of {figures.samples} tokens never seen before (cold), and a token seen before"]
        out += ["(cached: the verified-token cache, keyed by the token's SHA-256).", ""]
        out += table("token", "µs per verification")
        out += [row("RS256 (2048-bit), cold", f"{figures.rs256_cold_us:.1f}")]
        out += [row("ES256 (P-256), cold", f"{figures.es256_cold_us:.1f}")]
        out += [row("cached (any algorithm)", f"{figures.cached_us:.2f}"), ""]
    if results.tokens:
        out += ["## Minted tokens (`[tokens]`)", "", bench_tokens.DESCRIPTION, "", *results.tokens, ""]
    # Not measured by this run: the figures behind design choices the code cites.
    out += [DESIGN_CHOICES.read_text(encoding="utf-8")]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="tiny counts, to check the harness runs")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not bench_run.wrk_available():
        print("wrk is missing: run `make system-deps` (Debian package wrk)", file=sys.stderr)
        return 2
    results = bench_run.run(bench_run.QUICK if args.quick else bench_run.FULL)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, args.quick), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
