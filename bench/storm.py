"""Many idle streams opened at once, held, then dropped: what the subject holds, and what it gives back.

`run_storm()` is one storm against one subject (the "Many open streams" rows of docs/BENCHMARKS.md);
`python -m bench.storm --streams N [--tree DIR] [--workers W]` runs one storm against a gateway
started from a source tree (with thread ownership on its default SQLite store, as `bench.run`
starts it), for measuring a change without the whole benchmark; `--profile OUT` runs that gateway
under `bench.cpuprofile` and writes the storms' CPU-time stacks to OUT-1.

A gateway worker relays a stream on two sockets (the client's and the backend's), so one worker
holds at most `(hard fd limit - FD_MARGIN) // 2` streams: `max_streams_per_worker()`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import tomli_w

from bench import load, measure, peers

# fds a gateway worker uses besides its streams: stdio, the listening socket, epoll, the loop's
# self-pipe and signal fds, the SQLite file with its WAL and shared memory, the JWKS client's
# connection, with room to spare.
FD_MARGIN = 64
# "Memory back": the subject's RSS this long after the clients left, against before they came.
MEMORY_BACK_SECONDS = 2.0


def raise_own_fd_limit() -> int:
    """The load generator runs in this process and holds one fd per stream: soft limit up to the
    hard one. Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def max_streams_per_worker() -> int:
    """The most streams one process can relay under this machine's hard fd limit (2 fds each)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 10_000
    return (hard - FD_MARGIN) // 2


def run_storm(pids: Sequence[int], port: int, upstream_port: int, token: str, streams: int) -> dict[str, float]:
    """One storm of `streams` idle streams against the subject listening on `port`, whose processes
    are `pids`: time to all first events, RSS per open stream, then after the clients leave the
    time until the subject's fds and its upstream connections are back, and its RSS
    `MEMORY_BACK_SECONDS` after they left against before they came."""
    time.sleep(1.0)
    base_rss, base_fds = measure.rss_kib(pids), measure.fd_count(pids)
    base_upstream = measure.established_to(upstream_port)
    storm = load.Storm("127.0.0.1", port, token, streams)
    storm.start()
    storm.opened.wait(150)
    time.sleep(0.5)
    rss = measure.rss_kib(pids)
    released = time.monotonic()
    storm.release()
    fds_back = measure.wait_until(lambda: measure.fd_count(pids) <= base_fds + 2, timeout=60)
    conns_back = measure.wait_until(lambda: measure.established_to(upstream_port) <= base_upstream + 2, timeout=60)
    time.sleep(max(0.0, released + MEMORY_BACK_SECONDS - time.monotonic()))
    rss_after = measure.rss_kib(pids)
    storm.join(30)
    result = storm.result
    assert result is not None
    grown = rss - base_rss
    return {
        "opened": result.opened,
        "failures": result.failures,
        "all_first_events_s": result.seconds_to_all_first_events,
        "kib_per_stream": grown / max(result.opened, 1),
        "fds_back_s": math.nan if fds_back is None else fds_back,
        "upstream_back_s": math.nan if conns_back is None else conns_back,
        "rss_kept_kib": rss_after - base_rss,
        "rss_kept_share": (rss_after - base_rss) / grown if grown > 0 else math.nan,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storm")
    parser.add_argument("--streams", type=int, default=0, help="0: the most one worker can hold here")
    parser.add_argument("--tree", type=Path, default=peers.ROOT, help="the gateway's source tree")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="the gateway under bench.cpuprofile: the storms' stacks in OUT-1")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--pymalloc", action="store_true", help="the gateway on Python's own allocator, not the image's jemalloc"
    )
    parser.add_argument("--direct", action="store_true", help="the storm to the upstream itself, for scale")
    args = parser.parse_args(argv)
    raise_own_fd_limit()
    streams = args.streams or max_streams_per_worker()
    signer = peers.Signer()
    with tempfile.TemporaryDirectory(prefix="chatkit-gateway-storm-") as name:
        folder = Path(name)
        with peers.stopped_after() as started:
            jwks, upstream = peers.start_jwks_and_upstream(folder, signer, started)
            up_port, gw_port = int(upstream.url.rsplit(":", 1)[1]), peers.free_port()
            config = peers.gateway_config(gw_port, upstream.url, jwks.url, folder)
            if args.workers > 1:
                config["server"]["workers"] = args.workers
            (folder / "gateway.toml").write_text(tomli_w.dumps(config))
            tree = args.tree.resolve()
            serve = ["serve", "--config", str(folder / "gateway.toml")]
            if args.profile:
                command = [sys.executable, "-m", "bench.cpuprofile", str(args.profile.resolve()), "--", *serve]
            else:
                command = [sys.executable, "-m", "gateway", *serve]
            env = peers.gateway_env(
                {"PYTHONPATH": os.pathsep.join([str(tree), str(peers.ROOT)])}, jemalloc=not args.pymalloc
            )
            gateway = peers.start("gateway", command, f"http://127.0.0.1:{gw_port}", "/readyz", cwd=tree, env=env)
            started.append(gateway)
            token = signer.token()
            if args.profile:
                gateway.process.send_signal(signal.SIGUSR1)  # start-up's stacks to OUT-0, the storms' to OUT-1
            for round_ in range(args.rounds):
                subject, port = (upstream, up_port) if args.direct else (gateway, gw_port)
                figures = run_storm(subject.pids, port, up_port, token, streams)
                print(json.dumps({"round": round_, "streams": streams, "workers": args.workers, **figures}), flush=True)
            if args.profile:
                gateway.process.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
