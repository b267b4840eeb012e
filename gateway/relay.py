"""The relay of the ChatKit backend's answer to the client: status, headers, and a body that
streams as it arrives.

The answer comes from `upstream.py` (the clients to the backend). A small JSON answer was read
whole there and goes out in one message; anything else is forwarded chunk by chunk by a `_Pump`,
which also ends the exchange when the client leaves (ChatKit's stop button is a disconnect), when
the shutdown grace is over, and when the backend breaks mid-stream (an SSE stream then ends with
a ChatKit error event the chat can show).

Where the server offers it (the gateway's own protocol, `protocol.py`) and the answer came through
the gateway's transport, a stream's chunks after the first go from the upstream connection's read
callback straight to the client's socket (`ResponseCycle.deliver` into `DirectBody.write`): no task
wakes up and no ASGI message is built per chunk. Everything else is as on the `send` path: the
same bytes in the same order, as they arrive, with the same flow control, counting, heartbeat and
endings (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from .errors import GatewayError
from .headers import Headers, header_value, relay_response_headers
from .transport import StreamedResponse

if TYPE_CHECKING:
    from .cycle import ResponseCycle

__all__ = [
    "DIRECT_BODY",
    "DRAIN_STOP",
    "ChunkWatch",
    "DirectSource",
    "RelayOutcome",
    "StreamStop",
    "direct_body_of",
    "relay_body",
    "relay_response",
    "stream_error_event",
]

logger = logging.getLogger("chatkit_gateway.relay")

HEARTBEAT = b": keepalive\n\n"
# The scope extension under which the server offers a direct body writer (`protocol.py`).
DIRECT_BODY = "chatkit_gateway.direct_body"
FRAME_END = b"\n\n"


def stream_error_event(message: str, *, allow_retry: bool) -> bytes:
    """One ChatKit `error` event, as the ChatKit client shows it in the chat."""
    event = {"type": "error", "code": "custom", "message": message, "allow_retry": allow_retry}
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + FRAME_END


UPSTREAM_BROKE_EVENT = FRAME_END + stream_error_event(
    "The connection to the assistant was interrupted. Please try again.", allow_retry=True
)
SHUTDOWN_EVENT = FRAME_END + stream_error_event(
    "The server is restarting and ended this reply. Please try again.", allow_retry=True
)


@dataclass(frozen=True, slots=True)
class StreamStop:
    """Why a stream is ended before its body ends (a `streams_ended` reason), and its last event."""

    reason: str
    event: bytes


DRAIN_STOP = StreamStop("drain", SHUTDOWN_EVENT)


def _is_sse(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether (lower-cased) response headers announce an SSE stream."""
    value = header_value(headers, b"content-type")
    return value is not None and value.lower().startswith(b"text/event-stream")


def _lower(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(key.lower(), value) for key, value in headers]


@dataclass(slots=True)
class RelayOutcome:
    """What happened on the way back, for the request's log line and metrics."""

    status: int = 0
    streamed: bool = False
    bytes_out: int = 0
    events: int = 0
    upstream_broke: bool = False
    client_disconnected: bool = False
    stopped: bool = False
    idle_timeout: bool = False
    sse: bool = False
    first_byte_at: float | None = None
    stop_reason: str | None = None
    first_event_at: float | None = None
    refused: str | None = None  # the error code a `ChunkWatch` ended the stream with

    @property
    def end_reason(self) -> str:
        """Why a stream ended, as `chatkit_gateway_streams_ended_total{reason}` counts it."""
        if self.client_disconnected:
            return "client_disconnect"
        if self.stopped:
            return self.stop_reason or "drain"
        if self.idle_timeout:
            return "idle_timeout"
        if self.upstream_broke:
            return "upstream_error"
        return "complete"


class DirectWriter(Protocol):
    """Writes a stream's chunks to the client synchronously (`protocol.DirectBody`)."""

    def write(self, chunk: bytes) -> bool: ...

    def end(self, chunk: bytes) -> None: ...

    async def drain(self) -> None: ...


class DirectSource(Protocol):
    """What the server's scope extension refers to: a response that may take chunks directly, and
    tell of its client leaving by a callback; and a request whose body may be taken when it has all
    arrived (`body.read_body`)."""

    def direct_writer(self) -> DirectWriter | None: ...

    def body_in_hand(self) -> bytes | None: ...

    def answer(self, start: Any, body: bytes) -> bool: ...

    async def receive(self) -> Any: ...

    async def send(self, message: Any) -> None: ...

    def watch_disconnect(self, callback: Callable[[], None]) -> bool: ...

    def unwatch_disconnect(self) -> None: ...


def direct_body_of(scope: Scope) -> Callable[[], DirectSource | None] | None:
    """The server's direct body writer for this request, if it offers one (a weak reference)."""
    extensions = scope.get("extensions")
    return extensions.get(DIRECT_BODY) if extensions else None


class ChunkWatch(Protocol):
    """Sees an SSE stream's chunks before they are relayed, until it turns `active` off.

    `feed` returns the bytes that may go to the client now (it may hold back an unfinished event)
    or raises a `GatewayError`, which ends the stream with a ChatKit error event; `rest` returns
    what may still go out when the stream ends."""

    active: bool

    async def feed(self, chunk: bytes) -> bytes: ...

    async def rest(self) -> bytes: ...


async def relay_response(
    response: httpx.Response | StreamedResponse,
    send: Send,
    receive: Receive,
    *,
    body: bytes | None = None,
    extra_headers: Headers | None = None,
    heartbeat_seconds: float = 0.0,
    stop: asyncio.Future[StreamStop] | None = None,
    outcome: RelayOutcome | None = None,
    watch: ChunkWatch | None = None,
    direct: Callable[[], DirectSource | None] | None = None,
    headed: Callable[[], None] | None = None,
) -> RelayOutcome:
    """Relay status, headers and body; stream bodies chunk by chunk as they arrive.

    The upstream response is closed in every case, and at once when the client disconnects
    (ChatKit's stop button is a disconnect; the backend then saves the partial answer). When
    `stop` completes (the end of a shutdown's grace, the session's end), a stream is ended with the
    ChatKit error event it carries; one that is complete already ends after the first event.
    `outcome`, when given, is filled in as the relay goes, so a caller sees it even if cancelled.
    `watch`, for an SSE stream, sees its chunks first (see `ChunkWatch`). `direct`, the server's
    offer of a direct body writer (`direct_body_of`), lets a stream's chunks bypass `send`.
    `headed` is called once the head has gone out.
    """
    outcome = outcome or RelayOutcome()
    outcome.status, outcome.streamed = response.status_code, body is None
    try:
        sse, writable = await _send_start(response, send, extra_headers)
        if headed is not None:
            headed()
        outcome.first_byte_at = time.monotonic()
        outcome.sse = sse
        if body is not None:
            await send({"type": "http.response.body", "body": body})
            outcome.bytes_out = len(body)
            return outcome
        pump = _Pump(
            response,
            send,
            receive,
            outcome,
            sse=writable,
            heartbeat_seconds=heartbeat_seconds,
            watch=watch,
            direct=direct,
        )
        await pump.run(stop)
        return outcome
    finally:
        if isinstance(response, StreamedResponse):
            response.close()  # at once, without awaiting: nothing to shield from a cancellation
        elif not response.is_closed:
            with anyio.CancelScope(shield=True):
                await response.aclose()


async def relay_body(
    status: int,
    headers: Headers,
    body: bytes,
    send: Send,
    *,
    extra_headers: Headers | None = None,
    outcome: RelayOutcome | None = None,
    cycle: DirectSource | None = None,
) -> RelayOutcome:
    """Relay an answer whose body is in hand (a small JSON answer, read whole): status, headers
    (lower-cased, as the upstream sent them) and the body in one message, or, where the server's
    `cycle` takes a whole answer, in one call (the same bytes, one write either way)."""
    outcome = outcome or RelayOutcome()
    outcome.status = status
    start, outcome.sse = _start_message(status, headers, extra_headers)
    if cycle is None or not cycle.answer(start, body):
        # The head is held until the body comes: it leaves with it, one write either way.
        await send(start)
        await send({"type": "http.response.body", "body": body})
    outcome.first_byte_at = time.monotonic()
    outcome.bytes_out = len(body)
    return outcome


async def _send_start(
    response: httpx.Response | StreamedResponse, send: Send, extra_headers: Headers | None
) -> tuple[bool, bool]:
    """Send the status and headers; whether the body is an SSE stream, and whether the gateway may
    write events into it. (Its own function so the header lists are freed before a long stream starts.)"""
    if not isinstance(response, StreamedResponse):
        return await _send_head(response.status_code, _lower(response.headers.raw), send, extra_headers)
    head = await _send_head(response.status_code, response.headers, send, extra_headers)
    response.drop_headers()
    return head


def _start_message(status: int, raw_headers: Headers, extra_headers: Headers | None) -> tuple[dict[str, Any], bool]:
    """The `http.response.start` message relaying an answer's status and lower-cased headers, and
    whether the answer is an SSE stream."""
    sse = _is_sse(raw_headers)
    headers = relay_response_headers(raw_headers, sse=sse)
    if extra_headers:
        headers.extend(extra_headers)
    return {"type": "http.response.start", "status": status, "headers": headers}, sse


async def _send_head(status: int, raw_headers: Headers, send: Send, extra_headers: Headers | None) -> tuple[bool, bool]:
    """`_send_start` from the status and the lower-cased header list."""
    start, sse = _start_message(status, raw_headers, extra_headers)
    await send(start)
    if not sse:
        return False, False
    # An encoded stream (gzip, say) is relayed as the upstream's bytes under its own label: a
    # heartbeat or an error event written into it would corrupt it.
    encoding = header_value(raw_headers, b"content-encoding")
    return True, encoding is None or encoding.strip().lower() == b"identity"


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Pump:
    """Forwards one body to the client as it arrives, until the body ends, the client leaves, or
    `stop` completes (the end of a shutdown's grace, or of the user's session): the stream then ends
    with the ChatKit error event `stop` carries. A stream whose `stop` completed before it began
    (a session already over) gets its first event, then that end.

    It runs in the request's own task. The client's disconnect, like `stop`, ends the pump by
    cancelling that task: the server calls back when the client's connection is lost
    (`DirectSource.watch_disconnect`), or, where it cannot, an extra task waits in `receive()`.
    `finished` keeps a late callback from cancelling the task once it is done, and `uncancel()`
    tells that cancellation apart from one coming from outside (which propagates). The heartbeat
    is a timer, not a task. Plain asyncio callbacks rather than tasks or an anyio task group: each
    costs memory and CPU for as long as a stream lasts (docs/performance.md).
    """

    __slots__ = (
        "beat",
        "beating",
        "direct",
        "ended",
        "finished",
        "heartbeat_seconds",
        "last_write",
        "loop",
        "outcome",
        "receive",
        "response",
        "send",
        "sse",
        "tail",
        "task",
        "watch",
        "writer",
    )

    def __init__(
        self,
        response: httpx.Response | StreamedResponse,
        send: Send,
        receive: Receive,
        outcome: RelayOutcome,
        *,
        sse: bool,
        heartbeat_seconds: float,
        watch: ChunkWatch | None = None,
        direct: Callable[[], DirectSource | None] | None = None,
    ) -> None:
        self.response, self.send, self.receive, self.outcome = response, send, receive, outcome
        self.direct = direct
        self.sse, self.heartbeat_seconds = sse, heartbeat_seconds
        self.loop = asyncio.get_running_loop()
        self.last_write = self.loop.time()
        # The last two bytes sent: a heartbeat or an error event goes only between SSE frames.
        self.tail = FRAME_END
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.finished = False
        self.ended = False  # the client's body was ended by the direct writer (`_sink`)
        self.watch = watch if sse else None
        # The direct writer while chunks go from the upstream's read callback (`_sink`).
        self.writer: DirectWriter | None = None
        self.beat: asyncio.TimerHandle | None = None  # the heartbeat's next look
        self.beating: asyncio.Future[None] | None = None  # a heartbeat going out through `send`

    async def run(self, stop: asyncio.Future[StreamStop] | None) -> None:
        source = self.direct() if self.direct is not None else None
        watched = source is not None and source.watch_disconnect(self._client_left)
        watcher = None
        if not watched:
            watcher = asyncio.ensure_future(_wait_for_disconnect(self.receive))
            watcher.add_done_callback(self._on_disconnect)
        del source  # a weak reference's target: not held by the pump's frame
        ended_before = stop is not None and stop.done()
        if stop is not None and not ended_before:
            stop.add_done_callback(self._on_stop)
        if self.sse and self.heartbeat_seconds > 0:
            self.beat = self.loop.call_at(self.last_write + self.heartbeat_seconds, self._beat)
        try:
            if stop is not None and ended_before:
                await self._forward_first_event()
                await self._end(stop.result())
                return
            await self._forward()
        except asyncio.CancelledError:
            outcome = self.outcome
            if (outcome.client_disconnected or outcome.stopped) and self.task.uncancel() == 0:
                # Our own cancellation: the client left, or `stop` completed.
                if outcome.stopped and not outcome.client_disconnected and stop is not None:
                    self.finished = True
                    await self._end(stop.result())
                return
            raise
        finally:
            self.finished = True
            if stop is not None:
                stop.remove_done_callback(self._on_stop)
            if watcher is not None:
                watcher.cancel()
            elif (source := self.direct() if self.direct is not None else None) is not None:
                source.unwatch_disconnect()
            if self.beat is not None:
                self.beat.cancel()
            if self.beating is not None:
                self.beating.cancel()

    async def _forward(self) -> None:
        send, outcome, sse, watch = self.send, self.outcome, self.sse, self.watch
        # The transport's own stream, not `aiter_raw()`: chunks as they came off the socket, without
        # two layers of async generators and httpx's re-chunker per chunk (docs/performance.md).
        stream = cast(httpx.AsyncByteStream, self.response.stream)
        # The exchange itself when it came through the gateway's transport: chunks after the first
        # may then go to the client from its read callback (`_sink`).
        cycle: ResponseCycle | None = getattr(stream, "cycle", None) if self.direct is not None else None
        try:
            async for chunk in stream:
                if watch is not None:
                    try:
                        chunk = await watch.feed(chunk)
                    except GatewayError as refusal:
                        outcome.refused = refusal.code
                        event = FRAME_END + stream_error_event(refusal.message, allow_retry=True)
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                        break
                    if not watch.active:
                        watch = None
                if not chunk:
                    continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._sent(chunk)
                if watch is None and cycle is not None and (writer := self._direct_writer()) is not None:
                    # The rest of the body from the upstream's read callback straight to the client.
                    self.writer = writer  # the heartbeat writes through it too, meanwhile
                    try:
                        await cycle.deliver(self._sink, writer.drain)
                    finally:
                        self.writer = None
                    if self.ended:
                        return  # the body's end went out with its last bytes
                    break
            if watch is not None and outcome.refused is None and (held := await watch.rest()):
                await send({"type": "http.response.body", "body": held, "more_body": True})
        except httpx.HTTPError as exc:
            # The backend broke after its headers went out: the status cannot change any more. An
            # SSE stream is closed cleanly with an in-band error event the chat can show; any other
            # body is left incomplete, so the client sees a broken response, not a short one.
            outcome.upstream_broke = True
            outcome.idle_timeout = isinstance(exc, httpx.ReadTimeout)
            logger.warning("upstream stream broke: %s", type(exc).__name__)
            if not sse:
                return
            if watch is not None and outcome.refused is None and (held := await watch.rest()):
                await send({"type": "http.response.body", "body": held, "more_body": True})
            await send({"type": "http.response.body", "body": UPSTREAM_BROKE_EVENT, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def _direct_writer(self) -> DirectWriter | None:
        """The server's direct writer for the rest of the body, if it offers one now (else the
        chunks go on through `send`)."""
        source = self.direct() if self.direct is not None else None
        return source.direct_writer() if source is not None else None

    def _sink(self, chunk: bytes, last: bool) -> bool:
        """`ResponseCycle.deliver`'s sink: runs in the upstream connection's read callback. (A
        method, not a closure: it lives as long as the stream.)"""
        writer = self.writer
        assert writer is not None  # set for as long as `deliver` runs
        if last:
            # The backend's body ended with this read: its last bytes and the end of the client's
            # body go in one write, and the response is complete.
            self.ended = True
            writer.end(chunk)
            more = False
        else:
            more = writer.write(chunk)
        if chunk:
            self._sent(chunk)
        return more

    def _sent(self, chunk: bytes) -> None:
        """A chunk went to the client: count it, and for SSE its events, its frame tail (a
        heartbeat or an error event goes only between frames) and the time of the write."""
        outcome = self.outcome
        outcome.bytes_out += len(chunk)
        if self.sse:
            if events := chunk.count(FRAME_END):
                outcome.events += events
                if outcome.first_event_at is None:
                    outcome.first_event_at = time.monotonic()
            # No copy of the chunk (an event may be hundreds of KB) to keep its last 2 bytes.
            self.tail = chunk[-2:] if len(chunk) > 1 else (self.tail + chunk)[-2:]
            self.last_write = self.loop.time()

    async def _forward_first_event(self) -> None:
        send, outcome = self.send, self.outcome
        async for chunk in self.response.aiter_raw():
            if not chunk:
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            outcome.bytes_out += len(chunk)
            outcome.events += chunk.count(FRAME_END)
            if outcome.events:
                outcome.first_event_at = time.monotonic()
                return

    async def _end(self, why: StreamStop) -> None:
        """End the stream early: its error event (SSE only: another body would be corrupted), then
        the end of the body."""
        if self.ended:
            # The body ended cleanly in the same loop turn as `stop` fired: it stays as it was.
            self.outcome.stopped = False
            return
        self.outcome.stopped, self.outcome.stop_reason = True, why.reason
        if self.sse:
            await self.send({"type": "http.response.body", "body": why.event, "more_body": True})
        await self.send({"type": "http.response.body", "body": b""})

    def _beat(self) -> None:
        """The heartbeat's timer: after `heartbeat_seconds` without a write, a comment goes out,
        only between frames (a chunk may end mid-event); then it looks again when the next one
        would be due, at least 50 ms later."""
        self.beat = None
        if self.finished or self.ended or self.beating is not None:
            return
        loop, period = self.loop, self.heartbeat_seconds
        now = loop.time()
        if now - self.last_write >= period and self.tail == FRAME_END:
            if self.writer is None:
                # Chunks go through `send` for now (the first event is not out yet): so does this.
                self.beating = asyncio.ensure_future(self._send_heartbeat())
                return
            self.writer.write(HEARTBEAT)
            self.last_write = now
        self.beat = loop.call_at(max(now + 0.05, self.last_write + period), self._beat)

    async def _send_heartbeat(self) -> None:
        try:
            await self.send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
            self.last_write = self.loop.time()
        finally:
            self.beating = None
        if not self.finished:
            self._beat()

    def _on_disconnect(self, watcher: asyncio.Future[None]) -> None:
        if watcher.cancelled() or watcher.exception() is not None:
            return
        self._client_left()

    def _client_left(self) -> None:
        if self.finished or self.ended:
            return
        self.outcome.client_disconnected = True
        self.task.cancel()

    def _on_stop(self, stop: asyncio.Future[StreamStop]) -> None:
        if self.finished or self.ended or self.outcome.client_disconnected:
            return
        self.outcome.stopped = True
        self.task.cancel()
