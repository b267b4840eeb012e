"""The gateway's HTTP/1.1 response cycle (`gateway/protocol.py`) against uvicorn's own.

The gateway writes the response side of uvicorn's cycle itself (a head built once and held for
the first body message, one check over all header names and one over all values). Here one ASGI
app is served twice on loopback, by uvicorn with its httptools protocol and by uvicorn with the
gateway's, and every answer is compared byte for byte on the wire (but for the `date` header's
second): framing (`Content-Length`, chunked, HEAD, 204, 304), `Connection: close` from the app,
HTTP/1.0, pipelined requests, `Expect: 100-continue`, headers refused (CR, LF, NUL in a value; a
separator in a name), a body longer or shorter than its `Content-Length`, a 500 from an app that
failed, and the scope the app is given. Where the two differ by design (one write; HTTP/1.0
close-delimited), the difference itself is checked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import httptools
import pytest
import uvicorn
import uvloop
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.body import read_body
from gateway.protocol import GatewayHttpProtocol
from gateway.relay import DIRECT_BODY
from tests.support.rawhttp import is_closed, read_response

BODY = b'{"data": [], "has_more": false}'
ANSWERED_AGAIN: list[bool] = []  # what a second `answer()` on an answered cycle returned
KEEP_ALIVE = 1  # seconds an idle connection stays open after its last answer
# struct tcp_info (linux/tcp.h): tcpi_data_segs_in is the u32 at byte 152.
DATA_SEGS_IN = struct.Struct("=I")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers as its path says (see the cases below)."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = "yes"
                await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/in-hand":
        # The body taken from the gateway's cycle when it has all arrived, else read as usual.
        direct = (scope.get("extensions") or {}).get(DIRECT_BODY)
        cycle = direct() if direct is not None else None
        in_hand = cycle.body_in_hand() if cycle is not None else None
        body = in_hand if in_hand is not None else await read_body(receive, scope["headers"], 1 << 20)
        answer = b"%s:%s" % (b"hand" if in_hand is not None else b"receive", body)
        await start(send, 200, [(b"content-length", b"%d" % len(answer))])
        await send({"type": "http.response.body", "body": answer})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    length = [(b"content-length", b"%d" % len(BODY))]
    json_type = [(b"content-type", b"application/json")]
    if path == "/json":
        await start(send, 200, json_type + length)
        await send({"type": "http.response.body", "body": BODY})
    elif path == "/later":  # the head waits for no body: it leaves on the loop's next turn
        await start(send, 200, json_type + length)
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": BODY})
    elif path == "/stream":  # no length: chunked, three messages and an empty end
        await start(send, 200, [(b"content-type", b"text/event-stream")])
        for n in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/chunked-by-app":
        await start(send, 200, [(b"Transfer-Encoding", b"chunked")])
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})
    elif path == "/empty":
        await start(send, 200, [])
        await send({"type": "http.response.body"})
    elif path in ("/204", "/304"):
        await start(send, int(path[1:]), [(b"etag", b'"x"')])
        await send({"type": "http.response.body", "body": b""})
    elif path == "/close":
        await start(send, 200, length + [(b"Connection", b"keep-alive, Close")])
        await send({"type": "http.response.body", "body": BODY})
    elif path == "/names":  # mixed case and a tab in a value: lower-cased names, the tab kept
        await start(send, 299, [(b"X-Mixed-Case", b"a\tb"), (b"content-length", b"0")])
        await send({"type": "http.response.body", "body": b""})
    elif path == "/echo":
        await start(send, 201, [(b"content-length", b"%d" % len(body))])
        await send({"type": "http.response.body", "body": body})
    elif path.startswith("/bad-"):
        name, value = {
            "/bad-crlf": (b"x-a", b"a\r\nx-injected: 1"),
            "/bad-lf": (b"x-a", b"a\nb"),
            "/bad-nul": (b"x-a", b"a\x00b"),
            "/bad-del": (b"x-a", b"a\x7fb"),
            "/bad-space-in-name": (b"x a", b"1"),
            "/bad-colon-in-name": (b"x:a", b"1"),
            "/bad-crlf-in-name": (b"x\r\nx-injected", b"1"),
        }[path]
        await start(send, 200, length + [(name, value)])
        await send({"type": "http.response.body", "body": BODY})
    elif path in ("/longer", "/shorter"):
        await start(send, 200, [(b"content-length", b"4" if path == "/longer" else b"40")])
        await send({"type": "http.response.body", "body": b"0123456789"})
    elif path == "/fails":
        raise RuntimeError("the app failed before answering")
    elif path == "/scope":
        seen = {key: value for key, value in scope.items() if key not in ("client", "server", "extensions", "headers")}
        seen["headers"] = [[name.decode(), value.decode()] for name, value in scope["headers"]]
        seen["state"] = dict(scope["state"])
        scope["state"]["touched"] = "by this request only"
        answer = json.dumps(seen, default=lambda item: item.decode("latin-1")).encode()
        await start(send, 200, [(b"content-length", b"%d" % len(answer))])
        await send({"type": "http.response.body", "body": answer})
    elif path == "/answer":
        # A whole answer in one call to the gateway's cycle (`_OneWriteCycle.answer`); uvicorn's
        # cycle has none, and gets the two messages.
        direct = (scope.get("extensions") or {}).get(DIRECT_BODY)
        cycle = direct() if direct is not None else None
        start_message = {"type": "http.response.start", "status": 200, "headers": length + json_type}
        if cycle is None or not cycle.answer(start_message, BODY):
            await send(start_message)
            await send({"type": "http.response.body", "body": BODY})
        else:
            ANSWERED_AGAIN.append(cycle.answer(start_message, BODY))
    elif path == "/extensions":
        direct = (scope.get("extensions") or {}).get(DIRECT_BODY)
        answer = b"direct" if direct is not None and direct() is not None else b"none"
        await start(send, 200, [(b"content-length", b"%d" % len(answer))])
        await send({"type": "http.response.body", "body": answer})
    else:
        await start(send, 404, [(b"content-length", b"0")])
        await send({"type": "http.response.body", "body": b""})


async def start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


class Servers:
    """uvicorn serving `app` twice on one uvloop thread: with its own protocol and the gateway's."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self._loop = uvloop.new_event_loop()
        self._servers: list[uvicorn.Server] = []
        self._serving: list[concurrent.futures.Future[None]] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Servers:
        self._thread.start()
        for name, protocol in (("uvicorn", HttpToolsProtocol), ("gateway", GatewayHttpProtocol)):
            config = uvicorn.Config(
                app,
                http=protocol,
                ws="none",
                lifespan="on",
                log_level="critical",
                server_header=False,
                proxy_headers=False,
                access_log=False,
                timeout_keep_alive=KEEP_ALIVE,
            )
            server = uvicorn.Server(config)
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.ports[name] = sock.getsockname()[1]
            self._serving.append(asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), self._loop))
            self._servers.append(server)
        deadline = time.monotonic() + 10
        while not all(server.started for server in self._servers):
            assert time.monotonic() < deadline, "the servers did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.should_exit = True
        # `serve` returns once the server has shut down (its `started` stays True after it).
        concurrent.futures.wait(self._serving, timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with Servers() as running:
        yield running


class Wire:
    """What one connection received: the bytes (each `date` header's value blanked), whether the
    server closed it, and how many TCP segments carried data to the client."""

    def __init__(self, data: bytes, closed: bool, segments: int) -> None:
        self.data = data
        self.closed = closed
        self.segments = segments

    def comparable(self) -> tuple[bytes, bool]:
        lines = [b"date: -" if line.startswith(b"date: ") else line for line in self.data.split(b"\r\n")]
        return b"\r\n".join(lines), self.closed


class _Count:
    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


def talk(port: int, *writes: bytes, answers: int = 1, pause: float = 0.0, linger: float = 0.15) -> Wire:
    """Send `writes` (`pause` s apart) on one connection; read until `answers` complete answers
    (0: until the server is silent for `linger` s) or the close, then `linger` s more for a close."""
    count = _Count()
    parser = httptools.HttpResponseParser(count)
    data = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for n, chunk in enumerate(writes):
            if n and pause:
                time.sleep(pause)
            sock.sendall(chunk)
        deadline = time.monotonic() + 5
        quiet_until = time.monotonic() + linger
        while time.monotonic() < deadline:
            waiting = answers and count.complete < answers
            sock.settimeout(max(0.01, (deadline if waiting else quiet_until) - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if waiting:
                    continue
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            quiet_until = time.monotonic() + linger
            if answers:
                try:
                    parser.feed_data(chunk)
                except httptools.HttpParserError:
                    pass  # a 100 Continue interim answer, or bytes after a close-delimited one
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    return Wire(data, closed, DATA_SEGS_IN.unpack_from(info, 152)[0])


def request(method: str, path: str, body: bytes = b"", *, version: bytes = b"HTTP/1.1", extra: bytes = b"") -> bytes:
    length = b"content-length: %d\r\n" % len(body) if body or method == "POST" else b""
    return (
        method.encode() + b" " + path.encode() + b" " + version + b"\r\nhost: t\r\n" + length + extra + b"\r\n" + body
    )


def both(servers: Servers, *writes: bytes, **options: Any) -> tuple[Wire, Wire]:
    return talk(servers.ports["uvicorn"], *writes, **options), talk(servers.ports["gateway"], *writes, **options)


SAME = [
    pytest.param([request("GET", "/json")], {}, id="json"),
    pytest.param([request("GET", "/answer")], {}, id="answer-in-one-call"),
    pytest.param([request("GET", "/answer"), request("HEAD", "/answer")], {"answers": 0}, id="answer-then-head"),
    pytest.param([request("POST", "/echo", b'{"type": "threads.list"}')], {}, id="post-echo"),
    pytest.param([request("GET", "/later")], {}, id="head-before-body"),
    pytest.param([request("GET", "/stream")], {}, id="stream-chunked"),
    pytest.param([request("GET", "/chunked-by-app")], {}, id="chunked-by-app"),
    pytest.param([request("GET", "/empty")], {}, id="empty-chunked"),
    pytest.param([request("GET", "/204")], {}, id="204"),
    pytest.param([request("GET", "/304")], {}, id="304"),
    pytest.param([request("GET", "/close")], {}, id="connection-close-from-app"),
    pytest.param([request("GET", "/json", extra=b"connection: close\r\n")], {}, id="connection-close-from-client"),
    pytest.param([request("GET", "/names")], {}, id="names-lowered-tab-kept"),
    pytest.param([request("GET", "/missing")], {}, id="404"),
    pytest.param([request("GET", "/fails")], {}, id="500-from-a-failed-app"),
    pytest.param([request("HEAD", "/json")], {"answers": 0, "linger": 0.3}, id="head-with-length"),
    pytest.param([request("HEAD", "/stream")], {"answers": 0, "linger": 0.3}, id="head-without-length"),
    pytest.param([request("GET", "/json", version=b"HTTP/1.0")], {}, id="http10-with-length"),
    pytest.param(
        [request("GET", "/json") + request("GET", "/stream") + request("HEAD", "/json")],
        {"answers": 0, "linger": 0.3},
        id="pipelined",
    ),
    pytest.param([request("GET", "/json"), request("GET", "/204")], {"answers": 2, "pause": 0.1}, id="keep-alive"),
    pytest.param(
        [b"POST /echo HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n", b"hello"],
        {"answers": 0, "pause": 0.2, "linger": 0.3},
        id="expect-100-continue",
    ),
    pytest.param([request("GET", "/shorter")], {}, id="body-shorter-than-length"),
    *(
        pytest.param([request("GET", path)], {}, id=path[1:])
        for path in (
            "/bad-crlf",
            "/bad-lf",
            "/bad-nul",
            "/bad-del",
            "/bad-space-in-name",
            "/bad-colon-in-name",
            "/bad-crlf-in-name",
        )
    ),
]


@pytest.mark.parametrize(("writes", "options"), SAME)
def test_the_gateway_answers_byte_for_byte_as_uvicorn(
    servers: Servers, writes: list[bytes], options: dict[str, Any]
) -> None:
    theirs, ours = both(servers, *writes, **options)
    assert ours.comparable() == theirs.comparable()
    assert ours.data or ours.closed


def test_a_header_the_app_gets_wrong_is_refused_and_nothing_of_the_answer_leaves(servers: Servers) -> None:
    for path in ("/bad-crlf", "/bad-nul", "/bad-space-in-name", "/bad-crlf-in-name"):
        wire = talk(servers.ports["gateway"], request("GET", path))
        assert wire.data == b"" and wire.closed, (path, wire.data)
    fine = talk(servers.ports["gateway"], request("GET", "/names"))
    assert b"x-mixed-case: a\tb\r\n" in fine.data and not fine.closed


def test_an_answer_in_hand_leaves_in_one_segment_where_uvicorn_sends_two(servers: Servers) -> None:
    theirs, ours = both(servers, request("GET", "/json"))
    assert ours.segments == 1
    assert theirs.segments == 2  # the check can fail: uvicorn writes the head apart
    assert talk(servers.ports["gateway"], request("GET", "/204")).segments == 1
    head = talk(servers.ports["gateway"], request("HEAD", "/json"), answers=0)
    assert head.segments == 1 and head.data.endswith(b"\r\n\r\n")


def test_a_head_waits_for_its_body_no_longer_than_the_next_loop_turn(servers: Servers) -> None:
    with socket.create_connection(("127.0.0.1", servers.ports["gateway"]), timeout=5) as sock:
        sock.sendall(request("GET", "/later"))
        sock.settimeout(0.2)  # the body comes 300 ms after the head
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n"), head
        sock.settimeout(5)
        assert sock.recv(65536) == BODY


def test_a_body_longer_than_its_length_is_not_sent(servers: Servers) -> None:
    theirs, ours = both(servers, request("GET", "/longer"))
    # uvicorn had written the head when the body came; the gateway held it: nothing leaves.
    assert theirs.data.startswith(b"HTTP/1.1 200 OK\r\n") and b"0123" not in theirs.data and theirs.closed
    assert ours.data == b"" and ours.closed


def test_an_http10_answer_without_length_is_close_delimited(servers: Servers) -> None:
    theirs, ours = both(servers, request("GET", "/stream", version=b"HTTP/1.0"), answers=0)
    assert b"transfer-encoding: chunked" in theirs.data
    head, _, body = ours.data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and b"connection: close" in head and ours.closed
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    head_only = talk(servers.ports["gateway"], request("HEAD", "/stream", version=b"HTTP/1.0"), answers=0)
    assert head_only.data.endswith(b"connection: close\r\n\r\n") and head_only.closed


def test_the_app_sees_the_scope_uvicorn_gives_it(servers: Servers) -> None:
    for version in (b"HTTP/1.1", b"HTTP/1.0"):
        target = request("POST", "/scope?a=1&b=%20", b"{}", version=version, extra=b"X-Up: One\r\n")
        scopes = []
        for port in servers.ports.values():
            for _ in range(2):  # the second request sees the lifespan's state, not the first one's change
                wire = talk(port, target)
                scopes.append(json.loads(wire.data.partition(b"\r\n\r\n")[2]))
        assert all(scope == scopes[0] for scope in scopes), scopes
        assert scopes[0]["state"] == {"started": "yes"}
        assert scopes[0]["http_version"] == version.decode()[5:]


def test_direct_writes_are_offered_to_http11_requests_only(servers: Servers) -> None:
    port = servers.ports["gateway"]
    assert talk(port, request("GET", "/extensions")).data.endswith(b"direct")
    assert talk(port, request("GET", "/extensions", version=b"HTTP/1.0")).data.endswith(b"none")


def test_an_idle_connection_closes_keep_alive_seconds_after_its_last_answer(servers: Servers) -> None:
    # The gateway's connection keeps one timer, re-armed for what is left of the idle time: each
    # answer restarts the count, and one that fires while a request is in progress (`/later`,
    # answered 0.3 s after it came) leaves the count to that request's answer.
    for name, port in servers.ports.items():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for path, pause in (("/json", 0.7), ("/json", 0.8), ("/later", 0.0)):
                sock.sendall(request("GET", path))
                answer = read_response(sock, linger=0)
                assert answer.status == 200 and not answer.closed, (name, path)
                answered = time.monotonic()
                time.sleep(pause)
            assert is_closed(sock, KEEP_ALIVE + 1.5), name
            assert KEEP_ALIVE - 0.2 < time.monotonic() - answered < KEEP_ALIVE + 1.2, name


def test_a_body_that_came_whole_with_its_head_is_taken_from_the_cycle(servers: Servers) -> None:
    port = servers.ports["gateway"]
    chunked = b"POST /in-hand HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    for writes, expected in (
        ((request("POST", "/in-hand", b"hello"),), b"hand:hello"),
        ((chunked,), b"hand:abc"),
        ((request("POST", "/in-hand"),), b"hand:"),
        # The head first, the body 0.2 s later; or the head with part of the body: the app runs
        # before the body is whole, and reads it through `receive()`.
        ((request("POST", "/in-hand", b"hello")[:-5], b"hello"), b"receive:hello"),
        ((request("POST", "/in-hand", b"hello")[:-2], b"lo"), b"receive:hello"),
        # A body the client sends only after `100 Continue`, which `receive()` writes.
        (
            (b"POST /in-hand HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n", b"hello"),
            b"receive:hello",
        ),
    ):
        wire = talk(port, *writes, pause=0.2, answers=1)
        assert wire.data.endswith(b"\r\n\r\n" + expected), (writes, wire.data)
    # Taken from the cycle, the body leaves the connection reading: two pipelined requests, two answers.
    two = talk(port, request("POST", "/in-hand", b"one") + request("POST", "/in-hand", b"two"), answers=2)
    assert two.data.count(b"HTTP/1.1 200 OK") == 2 and b"hand:one" in two.data and two.data.endswith(b"two")


def test_a_whole_answer_in_one_call_leaves_in_one_segment_and_only_once(servers: Servers) -> None:
    ANSWERED_AGAIN.clear()
    wire = talk(servers.ports["gateway"], request("GET", "/answer"))
    assert wire.segments == 1 and wire.data.endswith(BODY)
    assert ANSWERED_AGAIN == [False]  # an answered cycle takes no second answer


async def _accepted(
    protocol_class: type[HttpToolsProtocol], family: socket.AddressFamily, address: Any
) -> tuple[HttpToolsProtocol, Any, Any]:
    """A protocol of `protocol_class` as uvicorn's server makes it for a connection accepted on
    `address` (a real listening socket on the running uvloop loop), after its `connection_made`;
    with the client socket's own address and the listening socket's."""
    loop = asyncio.get_running_loop()
    config = uvicorn.Config(app, http=protocol_class, ws="none", lifespan="off", log_level="critical")
    made: asyncio.Future[HttpToolsProtocol] = loop.create_future()

    def factory() -> HttpToolsProtocol:
        protocol = protocol_class(config=config, server_state=uvicorn.server.ServerState(), app_state={}, _loop=loop)
        original = protocol.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            original(transport)  # type: ignore[arg-type]
            made.set_result(protocol)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol

    with socket.socket(family) as listening:
        listening.bind(address)
        listening.listen()
        server = await loop.create_server(factory, sock=listening)
        with socket.socket(family) as client:
            client.setblocking(False)
            await loop.sock_connect(client, listening.getsockname())
            protocol = await asyncio.wait_for(made, 5)
            own = client.getsockname()
            listening_address = listening.getsockname()
            protocol.transport.close()
        server.close()
        await server.wait_closed()
    return protocol, own, listening_address


def _families(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[socket.AddressFamily, Any]]:
    families: list[tuple[socket.AddressFamily, Any]] = [(socket.AF_INET, ("127.0.0.1", 0))]
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6) as probe:
            try:
                probe.bind(("::1", 0))
                families.append((socket.AF_INET6, ("::1", 0)))
            except OSError:
                pass
    families.append((socket.AF_UNIX, str(tmp_path_factory.mktemp("uds") / "gateway.sock")))
    return families


def test_a_connection_has_the_addresses_and_attributes_uvicorns_protocol_gives_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The gateway's protocol makes its connection state itself (not through uvicorn's `__init__`
    and `connection_made`): the same attributes, and the same client and server addresses, over
    TCP on IPv4 and IPv6 (where the machine has it) and over a Unix socket."""

    async def both(family: socket.AddressFamily, address: Any) -> None:
        theirs, their_client, their_server = await _accepted(HttpToolsProtocol, family, address)
        if family == socket.AF_UNIX:
            address = address + ".2"
        ours, our_client, our_server = await _accepted(GatewayHttpProtocol, family, address)
        assert set(vars(theirs)) <= {*vars(ours), *GatewayHttpProtocol.__slots__}
        if family == socket.AF_UNIX:
            assert theirs.client is None and ours.client is None
            assert theirs.server == (their_server, None) and ours.server == (our_server, None)
        else:
            assert theirs.client == their_client[:2] and ours.client == our_client[:2]
            assert theirs.server == their_server[:2] and ours.server == our_server[:2]
            assert isinstance(ours.client[1], int) and isinstance(ours.server[1], int)
        assert ours.scheme == theirs.scheme == "http"
        assert type(ours.pipeline).__name__ == "_Pipeline" and not ours.pipeline
        assert ours.flow._is_writable_event.is_set() and not ours.flow.write_paused and not ours.flow.read_paused
        assert ours.logger is theirs.logger and ours.access_logger is theirs.access_logger
        for name in ("asgi_version", "root_path", "limit_concurrency", "timeout_keep_alive", "access_log"):
            assert getattr(ours, name) == getattr(theirs, name), name

    for family, address in _families(tmp_path_factory):
        uvloop.run(both(family, address))
