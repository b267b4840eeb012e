"""`python -m bench.profile`: where the gateway's CPU goes under benchmark load.

Starts the benchmark's peers (upstream, JWKS, gateway; no nginx), warms the gateway, then applies
each load in turn for a bounded time:

- `json16` / `json1`: wrk, small authenticated `threads.list` POSTs at 16 connections / 1;
- `sse300`: 300 concurrent streams of events 50 ms apart (the benchmark's busiest SSE row);
- `sse-open`: bursts of 300 streams of 2 events: what a stream costs to open and close.

Two samplers, chosen with `--sampler`:

- `py-spy` (default): `py-spy record` on the gateway process while the load runs; writes
  `docs/flamegraph-{load}.svg`. py-spy samples on the wall clock and counts a runnable thread as
  busy, so on a machine with no idle core it over-weighs the calls after which the gateway is
  preempted (socket writes that wake the peer): read its shares as wall time, not CPU;
- `cpu`: the gateway runs under `bench.cpuprofile`, sampled on its own CPU time; writes
  `docs/cpu-profile-{load}.svg` and the collapsed stacks next to them (`--stacks DIR`), and prints
  the functions with the largest inclusive and own shares, then the CPU by part of the work
  (`bench.cpuprofile.PARTS`: the socket calls, uvicorn's machinery, the token, the body...).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench import cpuprofile, load, measure, peers

ROOT = Path(__file__).resolve().parents[1]
PY_SPY = Path(sys.executable).with_name("py-spy")
SSE_INTERVAL_MS = 50.0

# A load runs for the time given and returns the gateway's CPU per unit (microseconds) and the unit.
Load = Callable[[peers.Peer, str, float], tuple[float, str]]


def json_load(connections: int) -> Load:
    def run(gateway: peers.Peer, token: str, seconds: float) -> None:
        url = f"{gateway.url}/chatkit"
        result = measure.wrk(url, token, connections=connections, seconds=seconds, pids=gateway.pids)
        print(f"  {result.requests_per_second:,.0f} requests/s, {result.cpu_us_per_request:.0f} us CPU per request")
        return result.cpu_us_per_request, "request"

    return run


def sse_load(streams: int) -> Load:
    def run(gateway: peers.Peer, token: str, seconds: float) -> None:
        port = int(gateway.url.rsplit(":", 1)[1])
        before = measure.cpu_seconds(gateway.pids)
        events = int(seconds * 1000 / SSE_INTERVAL_MS)
        stats = load.run_streams("127.0.0.1", port, token, streams=streams, events=events, interval_ms=SSE_INTERVAL_MS)
        cpu = measure.cpu_seconds(gateway.pids) - before
        per_event = cpu / max(stats.events, 1) * 1e6
        print(f"  {stats.events:,} events, {per_event:.1f} us CPU per event")
        return per_event, "event"

    return run


def sse_open_load(streams: int, events: int) -> Load:
    """Streams opened and closed: bursts of `streams` concurrent streams of `events` events each,
    until the time is up (what the `sse300` row pays per stream, apart from its events)."""

    def run(gateway: peers.Peer, token: str, seconds: float) -> None:
        port = int(gateway.url.rsplit(":", 1)[1])
        before = measure.cpu_seconds(gateway.pids)
        deadline = time.monotonic() + seconds
        opened = 0
        for _ in range(10_000):  # bounded: a burst takes well over a millisecond
            if time.monotonic() >= deadline:
                break
            load.run_streams("127.0.0.1", port, token, streams=streams, events=events, interval_ms=SSE_INTERVAL_MS)
            opened += streams
        cpu = measure.cpu_seconds(gateway.pids) - before
        per_stream = cpu / max(opened, 1) * 1e6
        print(f"  {opened:,} streams, {per_stream:.0f} us CPU per stream of {events} events")
        return per_stream, "stream"

    return run


LOADS: dict[str, Load] = {
    "json16": json_load(16),
    "json1": json_load(1),
    "sse300": sse_load(300),
    "sse-open": sse_open_load(300, 2),
}


def with_py_spy(gateway: peers.Peer, token: str, name: str, seconds: float, output: Path, rate: int) -> None:
    args = [str(PY_SPY), "record", "--pid", str(gateway.process.pid), "--duration", str(int(seconds))]
    args += ["--rate", str(rate), "--nonblocking", "--output", str(output / f"flamegraph-{name}.svg")]
    spy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # The load runs a little longer than the recording, so every sample is under load.
    loader = threading.Thread(target=LOADS[name], args=(gateway, token, seconds + 2))
    loader.start()
    _, err = spy.communicate(timeout=seconds + 120)
    loader.join(seconds + 120)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")


def summarize(collapsed: str, top: int = 30) -> list[str]:
    """The functions (line numbers folded) with the largest inclusive share, and their own share."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, weight in cpuprofile.stacks(collapsed):
        total += weight
        frames = [cpuprofile.LINE_NUMBER.sub(")", frame) for frame in stack]
        own[frames[-1]] += weight
        for frame in set(frames):
            inclusive[frame] += weight
    return [f"{n / total:6.1%} {own[frame] / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]


def by_part(collapsed: str, cpu_us: float) -> list[str]:
    """The CPU by part of the work (`cpuprofile.PARTS`), as shares and as microseconds of `cpu_us`."""
    return [f"{share:6.1%} {share * cpu_us:7.1f}  {name}" for name, share in cpuprofile.parts(collapsed)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--sampler", choices=["py-spy", "cpu"], default="py-spy")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--load", choices=list(LOADS), action="append")
    parser.add_argument("--output", type=Path, default=ROOT / "docs", help="the folder for the flame graphs")
    parser.add_argument("--stacks", type=Path, help="with --sampler cpu: where to keep the collapsed stacks")
    args = parser.parse_args(argv)
    names = args.load or ["json16", "sse300"]
    args.output.mkdir(parents=True, exist_ok=True)  # a folder: the graphs are named by load
    with tempfile.TemporaryDirectory(prefix="chatkit-gateway-profile-") as folder:
        stacks = args.stacks or Path(folder)
        stacks.mkdir(parents=True, exist_ok=True)
        command: tuple[str, ...] = (sys.executable, "-m", "gateway")
        if args.sampler == "cpu":
            command = (sys.executable, "-m", "bench.cpuprofile", str(stacks / "stacks.txt"), "--")
        with peers.peers(with_nginx=False, gateway_command=command) as (_, gateway, _, signer):
            token = signer.token()
            json_load(4)(gateway, token, 1)  # warm-up
            if args.sampler == "cpu":
                os.kill(gateway.process.pid, signal.SIGUSR1)  # part 0: start-up and warm-up
            for part, name in enumerate(names, start=1):
                print(f"{name}:")
                if args.sampler == "py-spy":
                    with_py_spy(gateway, token, name, args.seconds, args.output, args.rate)
                    continue
                cpu_us, unit = LOADS[name](gateway, token, args.seconds)
                os.kill(gateway.process.pid, signal.SIGUSR1)
                path = stacks / f"stacks-{part}.txt"
                deadline = time.monotonic() + 10
                while not path.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.2)  # written whole by then: a few hundred stacks
                collapsed = path.read_text()
                title = f"chatkit-gateway CPU time, {name}"
                (args.output / f"cpu-profile-{name}.svg").write_text(cpuprofile.flamegraph_svg(collapsed, title))
                print("inclusive  own  function\n" + "\n".join(summarize(collapsed)))
                print(f"share  us per {unit}  part\n" + "\n".join(by_part(collapsed, cpu_us)))
                path.rename(stacks / f"stacks-{name}.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
