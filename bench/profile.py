"""`python -m bench.profile`: where the gateway's CPU goes, as py-spy sees it under benchmark load.

Starts the benchmark's peers (upstream, JWKS, gateway; no nginx), warms the gateway, then for each
load records the gateway process with `py-spy record` for a bounded time while the load runs:

- `json`: wrk, small authenticated `threads.list` POSTs at 16 connections;
- `sse`: 300 concurrent streams of events 50 ms apart (the benchmark's busiest SSE row).

Writes `docs/flamegraph-{load}.svg` and, with `--raw DIR`, py-spy's collapsed stacks, which
`summarize()` folds into the share of samples per function (self and inclusive) for the docs.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
from pathlib import Path

from bench import load, measure, peers

ROOT = Path(__file__).resolve().parents[1]
PY_SPY = Path(sys.executable).with_name("py-spy")


def record(pid: int, seconds: float, output: Path, fmt: str, rate: int) -> subprocess.Popen[bytes]:
    args = [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
    args += ["--format", fmt, "--output", str(output), "--nonblocking"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def under_json_load(gateway: peers.Peer, token: str, seconds: float, output: Path, fmt: str, rate: int) -> None:
    spy = record(gateway.process.pid, seconds, output, fmt, rate)
    measure.wrk(f"{gateway.url}/chatkit", token, connections=16, seconds=seconds + 1, pids=gateway.pids)
    _wait(spy)


def under_sse_load(gateway: peers.Peer, token: str, seconds: float, output: Path, fmt: str, rate: int) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    events = int((seconds + 2) * 1000 / 50)
    loader = threading.Thread(
        target=load.run_streams,
        args=("127.0.0.1", port, token),
        kwargs={"streams": 300, "events": events, "interval_ms": 50.0},
    )
    loader.start()
    spy = record(gateway.process.pid, seconds, output, fmt, rate)
    _wait(spy)
    loader.join(seconds + 60)


def _wait(spy: subprocess.Popen[bytes]) -> None:
    _, err = spy.communicate(timeout=120)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")


def summarize(raw: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, self share, inclusive share) from py-spy's collapsed stacks, by self share."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = stack.split(";")
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return [(frame, n / total, inclusive[frame] / total) for frame, n in own.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--load", choices=["json", "sse"], action="append")
    parser.add_argument("--raw", type=Path, help="also write collapsed stacks here, and print a summary")
    parser.add_argument("--output", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    loads = {"json": under_json_load, "sse": under_sse_load}
    with peers.peers(with_nginx=False) as (_, gateway, _, signer):
        token = signer.token()
        measure.wrk(f"{gateway.url}/chatkit", token, connections=4, seconds=1, pids=gateway.pids)  # warm-up
        for name in args.load or list(loads):
            run = loads[name]
            run(gateway, token, args.seconds, args.output / f"flamegraph-{name}.svg", "flamegraph", args.rate)
            if args.raw is not None:
                args.raw.mkdir(parents=True, exist_ok=True)
                raw = args.raw / f"{name}.txt"
                run(gateway, token, args.seconds, raw, "raw", args.rate)
                print(f"== {name}: self, inclusive")
                for frame, self_share, inclusive_share in summarize(raw):
                    print(f"{self_share:6.1%} {inclusive_share:6.1%}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
