"""What each optional feature costs: the gateway with it on against the same gateway with it off.

Every feature is a set of config overrides laid over the benchmark gateway's own configuration
(same upstream, same keys, same token). Each variant is a fresh `chatkit-gateway serve`; the
baseline ("off") is started and measured again next to each variant, so machine drift between
the two halves of a comparison stays small. Measured per variant: CPU µs per small JSON request
(wrk, c=16 and c=1) and CPU µs per relayed SSE event (100 streams).

A feature that needs a peer of its own (a trace collector, a Redis server) starts it in its
`setup`, on 127.0.0.1, and stops it after.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from bench import load, measure, peers

# (connections, seconds) for the JSON figures; (streams, events, interval ms) for the SSE one.
JSON_LOADS = (16, 1)
SSE_LOAD = (100, 60, 20.0)
QUICK_SSE_LOAD = (5, 10, 20.0)


@dataclass(frozen=True)
class Feature:
    name: str
    # Given the run's temp folder, a context manager that starts what the feature needs and yields
    # the config overrides that turn it on.
    setup: Callable[[Path], AbstractContextManager[Mapping[str, Any]]]
    note: str = ""
    jemalloc: bool = True  # the "on" gateway on the image's allocator (False: on Python's own)


@dataclass
class Figures:
    json_us: dict[int, float] = field(default_factory=dict)
    sse_us: float = float("nan")


@dataclass
class FeatureCost:
    feature: Feature
    off: Figures
    on: Figures


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


@contextmanager
def _variant(
    base_config: Path, name: str, overrides: Mapping[str, Any], *, jemalloc: bool = True
) -> Iterator[peers.Peer]:
    config = _merge(tomllib.loads(base_config.read_text()), overrides)
    port = peers.free_port()
    config["server"]["port"] = port
    path = base_config.with_name(f"gateway-{name}.toml")
    path.write_text(tomli_w.dumps(config))
    peer = peers.start(
        f"gateway-{name}",
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        f"http://127.0.0.1:{port}",
        "/readyz",
        env=peers.gateway_env(jemalloc=jemalloc),
    )
    try:
        yield peer
    finally:
        peers.stop(peer)


def _measure(peer: peers.Peer, token: str, seconds: float, sse: tuple[int, int, float]) -> Figures:
    pids = peer.pids
    figures = Figures()
    measure.wrk(f"{peer.url}/chatkit", token, connections=4, seconds=1, pids=pids)  # warm-up
    for connections in JSON_LOADS:
        result = measure.wrk(f"{peer.url}/chatkit", token, connections=connections, seconds=seconds, pids=pids)
        figures.json_us[connections] = result.cpu_us_per_request
    streams, events, interval = sse
    before = measure.cpu_seconds(pids)
    stats = load.run_streams("127.0.0.1", int(peer.url.rsplit(":", 1)[1]), token, **_sse(streams, events, interval))
    figures.sse_us = (measure.cpu_seconds(pids) - before) / max(stats.events, 1) * 1e6
    return figures


def _sse(streams: int, events: int, interval: float) -> dict[str, Any]:
    return {"streams": streams, "events": events, "interval_ms": interval}


def run(features: list[Feature], base_config: Path, token: str, *, seconds: float, quick: bool) -> list[FeatureCost]:
    sse = QUICK_SSE_LOAD if quick else SSE_LOAD
    costs = []
    for feature in features:
        with _variant(base_config, "off", {}) as off_peer:
            off = _measure(off_peer, token, seconds, sse)
        with feature.setup(base_config.parent) as overrides:
            with _variant(base_config, "on", overrides, jemalloc=feature.jemalloc) as on_peer:
                on = _measure(on_peer, token, seconds, sse)
        costs.append(FeatureCost(feature, off, on))
    return costs


# -- the features ---------------------------------------------------------------------------------


@contextmanager
def _tracing(root: Path) -> Iterator[Mapping[str, Any]]:
    port = peers.free_port()
    sink = peers.start(
        "otlp-sink",
        [sys.executable, "-m", "bench.otlp_sink", "--port", str(port)],
        f"http://127.0.0.1:{port}",
        "/",
    )
    try:
        yield {"tracing": {"enabled": True, "otlp_endpoint": sink.url, "sample_ratio": 1.0}}
    finally:
        peers.stop(sink)


def _fixed(overrides: Mapping[str, Any]) -> Callable[[Path], AbstractContextManager[Mapping[str, Any]]]:
    return lambda root: nullcontext(overrides)


FEATURES: list[Feature] = [
    # Two identical gateways: the noise floor of the comparison, and what tracing costs when off.
    Feature("tracing off (the default) against off: the noise floor", _fixed({"tracing": {"enabled": False}})),
    Feature("tracing on, every request sampled, OTLP to a loopback sink", _tracing),
    # The image runs on jemalloc (gateway/allocator.py); "on" here is the gateway without it.
    Feature("Python's own allocator (pymalloc) instead of the image's jemalloc", _fixed({}), jemalloc=False),
]
