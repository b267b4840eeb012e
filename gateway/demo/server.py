"""Running the demo: three uvicorn servers in one process and one event loop.

    identity provider   127.0.0.1:<free>   /.well-known/openid-configuration, /jwks.json
    ChatKit backend     127.0.0.1:<free>   POST /chatkit (signed identities only)
    front               host:port          the demo page, /signin, /signout, and the gateway

They start in that order (the gateway's start-up fetches the provider's keys and warms its pool to
the backend) and stop in the reverse one. The demo owns SIGINT and SIGTERM: one signal stops all
three gracefully and the process exits 0; a second forces it. One process, so nothing is left
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp

from ..app import create_app
from ..config import GatewayConfig, LoggingConfig, build_config
from ..logs import configure_logging
from .backend import create_backend_app
from .idp import AUDIENCE, COOKIE_NAME, DevIdentityProvider
from .page import DemoFront, create_page_app

__all__ = ["demo_config", "run_demo"]

LOOPBACK = "127.0.0.1"
# Short, so Ctrl-C is quick; an open reply stream gets this long to finish.
SHUTDOWN_GRACE_SECONDS = 2
# However a server's shutdown goes, the whole demo is gone this long after the signal.
STOP_DEADLINE_SECONDS = 6

logger = logging.getLogger("chatkit_gateway.demo")


class ExpectedCancellation(logging.Filter):
    """A reply still streaming when the grace period ends is cancelled: expected, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


class DemoServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the demo, which stops all three servers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket: connections are refused until its server is ready."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def url_host(host: str) -> str:
    """How a browser on this machine spells `host` in a URL (an any-address becomes loopback)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "[::1]"
    return f"[{host}]" if address.version == 6 else host


def front_origins(host: str, port: int) -> tuple[str, ...]:
    """The origins the demo page may be opened from: the printed one, and `localhost` for loopback."""
    printed = url_host(host)
    names = [printed, "localhost"] if printed in ("127.0.0.1", "[::1]") else [printed]
    return tuple(f"http://{name}:{port}" for name in names)


def demo_config(
    *, host: str, port: int, origins: tuple[str, ...], idp: DevIdentityProvider, backend_url: str, secret: str
) -> GatewayConfig:
    """The gateway configured as in production: cookie (and bearer) auth, origin check, injection,
    a signed identity for the backend. Only the issuer is a development one."""
    data: dict[str, Any] = {
        "server": {"host": host, "port": port, "shutdown_grace_seconds": SHUTDOWN_GRACE_SECONDS},
        "upstream": {"url": f"{backend_url}/chatkit", "identity_secret": secret},
        "auth": {
            "cookie_names": [COOKIE_NAME],
            "issuers": [{"issuer": idp.issuer, "jwks_url": idp.jwks_url, "audiences": [AUDIENCE]}],
        },
        "security": {"allowed_origins": list(origins)},
        # Ownership on, as in production; the demo keeps nothing once it stops.
        "ownership": {"store": "memory"},
        "logging": {"level": "info", "format": "text"},
    }
    return build_config(data)


def _server(app: ASGIApp, *, lifespan: Literal["on", "off"] = "off") -> DemoServer:
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        http="httptools",
        ws="none",  # plain HTTP only, as the gateway's own server (gateway/server.py)
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_config=None,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    return DemoServer(config)


async def _serve(server: DemoServer, sock: socket.socket) -> None:
    with contextlib.suppress(SystemExit):  # uvicorn's way of saying that the lifespan start-up failed
        await server.serve(sockets=[sock])


async def serve_all(servers: list[tuple[DemoServer, socket.socket]], banner: str) -> int:
    """Start `servers` in order, print `banner`, run until a signal; stop them in reverse order."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for open streams
            for server, _ in servers:
                server.force_exit = True
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    tasks: list[asyncio.Task[None]] = []
    healthy = True
    try:
        for server, sock in servers:
            tasks.append(asyncio.create_task(_serve(server, sock)))
            while not server.started and not tasks[-1].done() and not stop.is_set():
                await asyncio.sleep(0.01)
            if not server.started:
                healthy = stop.is_set()
                break
        else:
            print(banner, flush=True)
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            healthy = stopped in done
            stopped.cancel()
    finally:
        await stop_all(list(zip((server for server, _ in servers), tasks, strict=False)))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0 if healthy else 1


async def stop_all(running: list[tuple[DemoServer, asyncio.Task[None]]]) -> None:
    """Stop the servers in reverse order of starting, each cancelled if it outlasts the deadline.

    Front first: it ends its streams and runs the gateway's shutdown while its peers still answer.
    """
    deadline = asyncio.get_running_loop().time() + STOP_DEADLINE_SECONDS
    for server, task in reversed(running):
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), max(0.5, deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            logger.warning("a demo server did not stop in time; cancelling it")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def run_demo(host: str = LOOPBACK, port: int = 8000) -> int:
    """`chatkit-gateway demo`: run until Ctrl-C or SIGTERM; 0 after a signal, 1 if it cannot run."""
    try:
        front_socket = bind(host, port)
    except OSError as exc:
        print(f"chatkit-gateway demo: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        print("  (choose another port with --port)", file=sys.stderr)
        return 1
    idp_socket, backend_socket = bind(LOOPBACK, 0), bind(LOOPBACK, 0)
    port = front_socket.getsockname()[1]
    origins = front_origins(host, port)
    idp = DevIdentityProvider(f"http://{LOOPBACK}:{idp_socket.getsockname()[1]}", frozenset(origins))
    backend_url = f"http://{LOOPBACK}:{backend_socket.getsockname()[1]}"
    # A new secret per run: only this run's gateway can sign identities its backend accepts.
    secret = secrets.token_urlsafe(32)
    config = demo_config(host=host, port=port, origins=origins, idp=idp, backend_url=backend_url, secret=secret)
    configure_logging(LoggingConfig(level="info", format="text"), cookie_names=[COOKIE_NAME])
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").addFilter(ExpectedCancellation())
    front = DemoFront(create_page_app(idp), create_app(config))
    banner = "\n".join(
        [
            f"chatkit-gateway demo: open {origins[0]}",
            "  Sign in with any user name (the email is optional), then send a message: the reply streams",
            "  through the gateway, and the panel shows the identity and page context the backend received.",
            f"  identity provider: {idp.issuer}/.well-known/openid-configuration (tokens live 15 minutes)",
            f"  ChatKit backend:   {backend_url}/chatkit (accepts only identities the gateway signed)",
            "  Ctrl-C stops everything.",
        ]
    )
    servers = [
        (_server(idp.discovery_app()), idp_socket),
        (_server(create_backend_app(secret)), backend_socket),
        (_server(front, lifespan="on"), front_socket),
    ]
    try:
        return asyncio.run(serve_all(servers, banner))
    finally:
        for _, sock in servers:
            sock.close()
