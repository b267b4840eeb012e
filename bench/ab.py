"""`python -m bench.ab BEFORE AFTER`: two gateway source trees, one upstream, alternating runs, medians.

On a shared machine a change worth 10 % is lost in the run-to-run noise of two separate bench
runs. Here both gateways (each `python -m gateway serve` with its tree first on `sys.path`) sit
behind the same upstream and JWKS, and the loads alternate between them round by round (A B, B A,
...), so slow spells of the machine fall on both; each figure is the median over the rounds, and
the change is also given as the median of each round's B/A (the steadier figure on a busy machine).

Loads: `json1` and `json16` (wrk, small authenticated `threads.list`, 1 and 16 connections),
`sse300` (300 streams, events 50 ms apart), `sse-open` (bursts of 300 streams of 2 events: per stream
opened and closed). `--python-after` runs the AFTER gateway on another
interpreter (a venv of another Python with the same lock installed): the same tree twice then
measures the interpreter. CPU is the gateway process tree's user + system time
from /proc over each run; `sys` is the system part (the kernel's share: socket calls, loopback TCP).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tomli_w

from bench import load, measure, peers


def cpu_split(pids: list[int]) -> tuple[float, float]:
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / measure.TICKS, system / measure.TICKS


Load = Callable[[peers.Peer, str], tuple[int, tuple[float, float]]]


def json_load(connections: int, seconds: float) -> Load:
    def run(gateway: peers.Peer, token: str) -> tuple[int, tuple[float, float]]:
        pids = gateway.pids
        before = cpu_split(pids)
        result = measure.wrk(f"{gateway.url}/chatkit", token, connections=connections, seconds=seconds, pids=pids)
        after = cpu_split(pids)
        assert result.errors == 0
        return result.requests, (after[0] - before[0], after[1] - before[1])

    return run


def sse_load(streams: int, events: int) -> Load:
    def run(gateway: peers.Peer, token: str) -> tuple[int, tuple[float, float]]:
        pids = gateway.pids
        port = int(gateway.url.rsplit(":", 1)[1])
        before = cpu_split(pids)
        stats = load.run_streams("127.0.0.1", port, token, streams=streams, events=events, interval_ms=50.0)
        after = cpu_split(pids)
        assert stats.failures == 0
        return stats.events, (after[0] - before[0], after[1] - before[1])

    return run


def sse_open_load(streams: int, seconds: float) -> Load:
    """Bursts of `streams` streams of 2 events until `seconds` are up: a stream's opening and closing."""

    def run(gateway: peers.Peer, token: str) -> tuple[int, tuple[float, float]]:
        pids = gateway.pids
        port = int(gateway.url.rsplit(":", 1)[1])
        before = cpu_split(pids)
        deadline = time.monotonic() + seconds
        opened = 0
        for _ in range(10_000):  # bounded: a burst takes well over a millisecond
            if time.monotonic() >= deadline:
                break
            stats = load.run_streams("127.0.0.1", port, token, streams=streams, events=2, interval_ms=50.0)
            assert stats.failures == 0
            opened += streams
        after = cpu_split(pids)
        return opened, (after[0] - before[0], after[1] - before[1])

    return run


def start_gateway(
    tree: Path, name: str, config: dict[str, object], folder: Path, python: str = sys.executable
) -> peers.Peer:
    port = peers.free_port()
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps({**config, "server": {**config["server"], "port": port}}))  # type: ignore[dict-item]
    env = peers.gateway_env({"PYTHONPATH": str(tree)})
    args = [python, "-m", "gateway", "serve", "--config", str(path)]
    return peers.start(name, args, f"http://127.0.0.1:{port}", "/readyz", cwd=tree, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab")
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--load", action="append", choices=["json1", "json16", "sse300", "sse-open"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--python-after", default=sys.executable, help="the interpreter of the AFTER gateway (its own venv's python)"
    )
    args = parser.parse_args(argv)
    loads: dict[str, Load] = {
        "json1": json_load(1, args.seconds),
        "json16": json_load(16, args.seconds),
        "sse300": sse_load(300, int(args.seconds * 20)),
        "sse-open": sse_open_load(300, args.seconds),
    }
    chosen = args.load or list(loads)
    signer = peers.Signer()
    with tempfile.TemporaryDirectory(prefix="chatkit-gateway-ab-") as name:
        folder = Path(name)
        with peers.stopped_after() as started:
            jwks, upstream = peers.start_jwks_and_upstream(folder, signer, started)
            config: dict[str, object] = {
                # `workers` only when asked for: a tree from before the key would refuse it.
                "server": {"host": "127.0.0.1", **({"workers": args.workers} if args.workers > 1 else {})},
                "upstream": {"url": f"{upstream.url}/chatkit"},
                "auth": {
                    "issuers": [
                        {"issuer": peers.ISSUER, "jwks_url": f"{jwks.url}/jwks.json", "audiences": [peers.AUDIENCE]}
                    ]
                },
                "logging": {"level": "warning"},
            }
            gateways = {
                "A": start_gateway(args.before.resolve(), "A", config, folder),
                "B": start_gateway(args.after.resolve(), "B", config, folder, args.python_after),
            }
            started += gateways.values()
            token = signer.token()
            for gateway in gateways.values():
                measure.wrk(f"{gateway.url}/chatkit", token, connections=4, seconds=1, pids=gateway.pids)
            figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for round_ in range(args.rounds):
                order = ("A", "B") if round_ % 2 == 0 else ("B", "A")
                for load_name in chosen:
                    for side in order:
                        time.sleep(0.3)
                        count, (user, system) = loads[load_name](gateways[side], token)
                        per = ((user + system) / count * 1e6, system / count * 1e6)
                        figures.setdefault((load_name, side), []).append(per)
                        print(f"round {round_} {load_name} {side}: {per[0]:.1f} us ({per[1]:.1f} sys)", flush=True)
            print(f"\nmedians over {args.rounds} rounds (us CPU per request or event; sys part):")
            for load_name in chosen:
                a = figures[(load_name, "A")]
                b = figures[(load_name, "B")]
                ma, mb = statistics.median(x for x, _ in a), statistics.median(x for x, _ in b)
                sa, sb = statistics.median(s for _, s in a), statistics.median(s for _, s in b)
                # Each round's B over the same round's A: a slow spell of the machine hits both.
                paired = statistics.median(y / x for (x, _), (y, _) in zip(a, b, strict=True))
                print(
                    f"{load_name}: A {ma:.1f} ({sa:.1f} sys)  B {mb:.1f} ({sb:.1f} sys)  "
                    f"B/A {mb / ma:.2f}, paired by round {paired:.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
