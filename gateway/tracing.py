"""Distributed tracing with OpenTelemetry: where one chat turn spent its time.

Off by default (`[tracing] enabled = false`); then nothing here runs per request and a client's
`traceparent` goes upstream unchanged, as any other allowlisted header. On, each request is one
server span named `chatkit {op}` with two kinds of child span:

    chatkit threads.add_user_message        (SERVER; continues the client's `traceparent`)
    ├── verify token                        (INTERNAL; `chatkit.token_cache_hit`)
    └── POST                                (CLIENT; the upstream call, until its answer ends)
                                            the backend's spans are children of this one

The upstream request carries this CLIENT span's W3C trace context (https://www.w3.org/TR/trace-context/)
in place of the client's, so the backend's spans join the same trace. Attributes follow the
OpenTelemetry HTTP semantic conventions plus `chatkit.op` and `chatkit.thread_id`. No token,
message text or user id goes into a span, except `enduser.id` with `tracing.include_user_id`.

Spans are exported in batches by the SDK's background thread (OTLP over HTTP to
`{otlp_endpoint}/v1/traces`), never on the event loop. See docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__
from .config import TracingConfig
from .outbound import TRACE_CONTEXT_HEADERS

__all__ = ["RequestTrace", "Tracing"]

_PROPAGATOR = TraceContextTextMapPropagator()


def _carrier(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in TRACE_CONTEXT_HEADERS and name.decode() not in carrier:
            carrier[name.decode()] = value.decode("latin-1")
    return carrier


class RequestTrace:
    """The spans of one request: the server span, and its children as the request reaches them."""

    __slots__ = ("_tracer", "span", "_context", "_include_user_id", "_upstream")

    def __init__(self, tracer: Tracer, span: Span, include_user_id: bool) -> None:
        self._tracer = tracer
        self.span = span
        self._context: Context = set_span_in_context(span)
        self._include_user_id = include_user_id
        self._upstream: Span | None = None

    def verify_span(self) -> Span:
        """A child span for the token check; the caller ends it."""
        return self._tracer.start_span("verify token", context=self._context, kind=SpanKind.INTERNAL)

    def identify(self, op: str, user_id: str | None, thread_id: object) -> None:
        """What the body said: the span gets its name, the op and the thread (when known)."""
        span = self.span
        span.update_name(f"chatkit {op}")
        span.set_attribute("chatkit.op", op)
        if isinstance(thread_id, str) and thread_id:
            span.set_attribute("chatkit.thread_id", thread_id)
        if self._include_user_id and user_id is not None:
            span.set_attribute("enduser.id", user_id)

    def upstream_headers(self, method: str, host: str, port: int, url: str) -> list[tuple[bytes, bytes]]:
        """Start the CLIENT span of the upstream call; the trace-context headers that carry it."""
        span = self._tracer.start_span(
            method,
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "server.address": host,
                "server.port": port,
                "url.full": url,
            },
        )
        self._upstream = span
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
        return [(key.encode("ascii"), value.encode("ascii")) for key, value in carrier.items()]

    def upstream_answered(self, status: int) -> None:
        if self._upstream is not None:
            self._upstream.set_attribute("http.response.status_code", status)

    def finish(self, status: int, error: str | None) -> None:
        """The request is over (a stream: at its end). Ends every span still open."""
        span = self.span
        if self._upstream is not None:
            if error is not None and error.startswith("upstream_"):
                self._upstream.set_attribute("error.type", error)
                self._upstream.set_status(Status(StatusCode.ERROR))
            self._upstream.end()
            self._upstream = None
        if status:
            span.set_attribute("http.response.status_code", status)
        # HTTP semantic conventions: a server span is an error for 5xx only; a 4xx is the client's.
        if status >= 500 or status == 0:
            span.set_attribute("error.type", error or str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class Tracing:
    """The tracer provider of one gateway: made at start-up, flushed and shut down at exit."""

    def __init__(self, config: TracingConfig, *, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = (config.otlp_endpoint or "").rstrip("/") + "/v1/traces"
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        else:
            # A test's exporter (e.g. the SDK's in-memory one) sees each span as it ends.
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("chatkit-gateway", __version__)
        self.include_user_id = config.include_user_id

    def start(
        self, headers: Sequence[tuple[bytes, bytes]], *, method: str, path: str, scheme: str, route: str
    ) -> RequestTrace:
        """The server span of a request, continuing the client's trace context when it sent one."""
        carrier = _carrier(headers)
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        span = self.tracer.start_span(
            "chatkit",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "url.scheme": scheme,
                "http.route": route,
                "network.protocol.name": "http",
            },
        )
        return RequestTrace(self.tracer, span, self.include_user_id)

    def shutdown(self) -> None:
        """Export what is pending and stop the exporter thread (blocking: call off the loop)."""
        self.provider.shutdown()
