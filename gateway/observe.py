"""What operators see: one log line per request and the Prometheus metrics (docs/operations.md).

Each request carries an `Exchange` record that the request path fills in as it goes (who, which
op, what the upstream answered, bytes, events); `Observer.finish` turns it into one JSON log line
and the metric updates when the request ends (at stream end for streams). The record holds no
token, cookie or message text, so neither can the log.

With several workers (`server.workers`), the metrics are the workers' together: each worker keeps
its values in a file of a directory the supervisor made (prometheus-client's multiprocess mode,
`share_metrics`), and `/metrics` on any worker sums them; gauges of open streams count the live
workers only.

Label values are bounded: `op` is one of the ChatKit ops the gateway knows (anything else is
`other`), `status` an HTTP status, `code` an error code of `errors.py`; a client cannot grow the
metric set by sending new values.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .chatkit import NON_STREAMING_TYPES, STREAMING_TYPES
from .relay import RelayOutcome

if TYPE_CHECKING:
    from .tracing import RequestTrace

__all__ = ["SHARED_METRICS_DIR", "Exchange", "LoopValue", "Observer", "share_metrics"]

# Where the workers of one gateway keep their metric values (prometheus-client's own variable).
SHARED_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def share_metrics(directory: str) -> None:
    """In a worker, before its `Observer` is made: keep metric values in files under `directory`
    (one set per process), which every worker's `/metrics` sums."""
    os.environ[SHARED_METRICS_DIR] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


access_logger = logging.getLogger("chatkit_gateway.access")

# The ChatKit ops, plus the names the upload and forward-auth routes log under.
KNOWN_OPS = STREAMING_TYPES | NON_STREAMING_TYPES | {"upload", "verify"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Why an SSE stream ended (`chatkit_gateway_streams_ended_total{reason}`).
STREAM_END_REASONS = (
    "complete",
    "client_disconnect",
    "upstream_error",
    "idle_timeout",
    "session_expired",
    "revoked",
    "drain",
)


@dataclass(slots=True)
class Exchange:
    """One request as the log and the metrics describe it."""

    request_id: str
    route: str
    started: float
    method: str = ""
    op: str = "-"
    user_id: str | None = None
    source: str | None = None
    status: int = 0
    upstream_status: int | None = None
    error: str | None = None
    ttfb: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    events: int = 0
    streamed: bool = False
    client_disconnected: bool = False
    upstream_broke: bool = False
    # SSE streams only: arrival to the first complete event relayed, and why the stream ended.
    first_event: float | None = None
    stream_end: str | None = None
    trace: RequestTrace | None = None
    ownership: str | None = None  # "denied": refused for naming an id of someone else's (or nobody's)

    def set_op(self, op: str) -> None:
        self.op = op if op in KNOWN_OPS else "other"

    def record(self, outcome: RelayOutcome) -> None:
        """What the relay saw: the upstream's answer as it went back to the client."""
        self.status = self.upstream_status = outcome.status
        if outcome.first_byte_at is not None:
            self.ttfb = outcome.first_byte_at - self.started
        self.bytes_out, self.events, self.streamed = outcome.bytes_out, outcome.events, outcome.streamed
        self.client_disconnected = self.client_disconnected or outcome.client_disconnected
        self.upstream_broke = outcome.upstream_broke
        if outcome.sse and outcome.streamed:
            self.stream_end = outcome.end_reason
            if outcome.first_event_at is not None:
                self.first_event = outcome.first_event_at - self.started
        if outcome.refused is not None:
            self.error = outcome.refused


class _KeyAge(Collector):
    """`chatkit_gateway_jwks_key_age_seconds{issuer}`, read at scrape time from the key caches."""

    def __init__(self, ages: Callable[[], Iterable[tuple[str, float | None]]]) -> None:
        self._ages = ages

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "chatkit_gateway_jwks_key_age_seconds",
            "Seconds since the issuer's keys were last fetched.",
            labels=["issuer"],
        )
        for issuer, age in self._ages():
            if age is not None:
                family.add_metric([issuer], age)
        yield family


class LoopValue(values.MutexValue):
    """A metric's value, written without a lock: every metric of the gateway is written on its
    event loop's thread (a store's thread hands its results to the loop first, and so do the
    exporters' threads, which write none). prometheus-client's lock per update guards writers on
    several threads, and cost ~0.7 µs of the ~1.1 an update took (docs/performance.md, "Sixth
    round"). A read from another thread sees the value before or after an update, as with the lock."""

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def get(self) -> float:
        return self._value


class Observer:
    """The metrics of one gateway (its own registry) and its access log."""

    def __init__(self) -> None:
        if values.ValueClass is values.MutexValue:
            # prometheus-client's default; a worker's shared files (`share_metrics`) stay as they are.
            values.ValueClass = LoopValue
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        # What `/metrics` answers with: this registry, or with several workers all of theirs.
        self.exposition = self.registry
        shared = os.environ.get(SHARED_METRICS_DIR)
        if shared and getattr(values.ValueClass, "_multiprocess", False):
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=shared)  # type: ignore[no-untyped-call]
        r = self.registry
        self.requests = Counter(
            "chatkit_gateway_requests", "Requests answered, by ChatKit op and status.", ["op", "status"], registry=r
        )
        self.latency = Histogram(
            "chatkit_gateway_request_duration_seconds",
            "Time from request to the end of the answer (streams: stream end).",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "chatkit_gateway_time_to_first_byte_seconds",
            "Time from request to the answer's first byte.",
            ["op"],
            buckets=TTFB_BUCKETS,
            registry=r,
        )
        self.first_event = Histogram(
            "chatkit_gateway_time_to_first_event_seconds",
            "Time from request arrival to the first SSE event relayed (the wait for the first token).",
            ["op"],
            buckets=TTFB_BUCKETS,
            registry=r,
        )
        self.streams_ended = Counter(
            "chatkit_gateway_streams_ended",
            "SSE streams ended, by ChatKit op and reason.",
            ["op", "reason"],
            registry=r,
        )
        self.open_streams = Gauge(
            "chatkit_gateway_open_streams", "Streams and uploads open now.", registry=r, multiprocess_mode="livesum"
        )
        self.auth_failures = Counter(
            "chatkit_gateway_auth_failures", "Refused credentials, by error code.", ["code"], registry=r
        )
        self.jwks_fetches = Counter(
            "chatkit_gateway_jwks_fetches", "JWKS fetches, by issuer and result.", ["issuer", "result"], registry=r
        )
        self.upstream_errors = Counter(
            "chatkit_gateway_upstream_errors", "Failures talking to the backend, by kind.", ["kind"], registry=r
        )
        self.rate_limited = Counter(
            "chatkit_gateway_rate_limit_rejections", "Requests refused by a per-user limit.", registry=r
        )
        self.ratelimit_backend_errors = Counter(
            "chatkit_gateway_rate_limit_backend_errors", "Rate-limit backend (Redis) failures.", registry=r
        )
        self.revocations = Counter(
            "chatkit_gateway_revocations", "Revocations recorded, by source.", ["source"], registry=r
        )
        self.token_exchanges = Counter(
            "chatkit_gateway_token_exchanges",
            "RFC 8693 token exchanges at the IdP (tokens.resources, mode exchange), by resource and result.",
            ["resource", "result"],
            registry=r,
        )
        self.ownership_denials = Counter(
            "chatkit_gateway_ownership_denials",
            "Requests refused for naming a thread or attachment the user does not own, by op.",
            ["op"],
            registry=r,
        )
        self.ownership_store_errors = Counter(
            "chatkit_gateway_ownership_store_errors", "Ownership store failures, by reason.", ["reason"], registry=r
        )

    def ownership_store_failed(self, reason: str) -> None:
        self.ownership_store_errors.labels(reason).inc()

    def prepare(self) -> None:
        """Make each op's series at start-up: they read 0 rather than missing until first used, and
        the first request of each op does not pay for making them."""
        for op in sorted(KNOWN_OPS):
            self._child(self.requests, op, "200")
            self._child(self.latency, op)
            self._child(self.ttfb, op)
        for op in sorted(STREAMING_TYPES):
            self._child(self.first_event, op)
            for reason in STREAM_END_REASONS:
                self._child(self.streams_ended, op, reason)
        for source in ("admin", "backchannel"):
            self.revocations.labels(source)

    def watch_key_ages(self, ages: Callable[[], Iterable[tuple[str, float | None]]]) -> None:
        collector = _KeyAge(ages)
        self.registry.register(collector)
        if self.exposition is not self.registry:
            self.exposition.register(collector)  # read in the worker that takes the scrape

    def revoked(self, source: str, count: int) -> None:
        self.revocations.labels(source).inc(count)

    def jwks_fetched(self, issuer: str, result: str) -> None:
        self.jwks_fetches.labels(issuer, result).inc()

    def token_exchanged(self, resource: str, result: str) -> None:
        self.token_exchanges.labels(resource, result).inc()

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        # prometheus-client's `labels()` validates and locks on every call; the children are
        # looked up here once per label set instead (docs/BENCHMARKS.md, "Measured design choices").
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def finish(self, exchange: Exchange, now: float | None = None) -> None:
        """The request is over: count it and write its log line."""
        end = time.monotonic() if now is None else now
        duration = end - exchange.started
        op = exchange.op
        self._child(self.requests, op, str(exchange.status)).inc()
        self._child(self.latency, op).observe(duration)
        if exchange.ttfb is not None:
            self._child(self.ttfb, op).observe(exchange.ttfb)
        if exchange.stream_end is not None:
            self._child(self.streams_ended, op, exchange.stream_end).inc()
            if exchange.first_event is not None:
                self._child(self.first_event, op).observe(exchange.first_event)
        if exchange.trace is not None:
            exchange.trace.finish(exchange.status, exchange.error)
        if exchange.error is not None:
            if exchange.status == 401:
                self.auth_failures.labels(exchange.error).inc()
            elif exchange.error.startswith("upstream_") or exchange.upstream_broke:
                self.upstream_errors.labels(exchange.error).inc()
            elif exchange.error == "rate_limited":
                self.rate_limited.inc()
            elif exchange.ownership == "denied":
                self._child(self.ownership_denials, op).inc()
        elif exchange.upstream_broke:
            self.upstream_errors.labels("broken_stream").inc()
        if access_logger.isEnabledFor(logging.INFO):
            # makeRecord + handle rather than .info(): the same record and handlers, without the
            # caller lookup that walks the stack for a location an access line does not need.
            record = access_logger.makeRecord(
                access_logger.name,
                logging.INFO,
                "",
                0,
                "%s %s %s %d",
                (exchange.method, exchange.route, op, exchange.status),
                None,
                extra={"fields": self._fields(exchange, duration)},
            )
            access_logger.handle(record)

    @staticmethod
    def _fields(exchange: Exchange, duration: float) -> dict[str, object]:
        return {
            "request_id": exchange.request_id,
            "method": exchange.method,
            "route": exchange.route,
            "op": exchange.op,
            "user_id": exchange.user_id,
            "source": exchange.source,
            "status": exchange.status,
            "upstream_status": exchange.upstream_status,
            "error": exchange.error,
            "duration_ms": round(duration * 1000, 2),
            "ttfb_ms": None if exchange.ttfb is None else round(exchange.ttfb * 1000, 2),
            "bytes_in": exchange.bytes_in,
            "bytes_out": exchange.bytes_out,
            "events": exchange.events,
            "streamed": exchange.streamed,
            "stream_end": exchange.stream_end,
            "client_disconnected": exchange.client_disconnected,
            "upstream_broke": exchange.upstream_broke,
            "ownership": exchange.ownership,
        }
