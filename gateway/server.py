"""Running the gateway under uvicorn, with the settings the measurements call for, and its drain.

`SIGTERM` (what Kubernetes and Docker send) starts a drain rather than uvicorn's immediate
shutdown: `/readyz` turns 503 at once so the platform stops routing new requests here, open
streams may finish for `server.shutdown_grace_seconds`, those still open are then ended with a
ChatKit error event, and the process exits 0. `SIGINT` (Ctrl-C) and a second `SIGTERM` stop at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from . import allocator
from .app import Gateway, create_app
from .config import GatewayConfig, redacted
from .logs import configure_logging
from .protocol import GatewayHttpProtocol

__all__ = ["GatewayServer", "run", "uvicorn_config"]

logger = logging.getLogger("chatkit_gateway")

# Streams were already ended by the drain; what is left for uvicorn is brief.
UVICORN_FINAL_SECONDS = 5


def uvicorn_config(config: GatewayConfig, app: Gateway | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app or create_app(config),
        host=config.server.host,
        port=config.server.port,
        # uvloop + httptools: more throughput than asyncio + h11 (docs/BENCHMARKS.md, "Measured
        # design choices"), and httptools refuses the CL+TE request smuggling that h11 accepts
        # (docs/hardening.md). The protocol is uvicorn's httptools one with `Upgrade: h2c`
        # ignored, HTTP/1.0 answered close-delimited, and a head written with its body (`protocol.py`).
        loop="uvloop",
        http=GatewayHttpProtocol,
        lifespan="on",
        # ChatKit is plain HTTP. With a WebSocket library installed uvicorn would take upgrades
        # itself: a websocket scope the gateway has no use for, and (websockets at debug level)
        # the handshake headers, credentials included, in the log.
        ws="none",
        # The gateway applies `server.trusted_proxies` itself; uvicorn's own proxy-header handling
        # would trust X-Forwarded-For from any loopback peer and rewrite the client address.
        proxy_headers=False,
        server_header=False,
        access_log=False,
        log_config=None,
        backlog=4096,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=UVICORN_FINAL_SECONDS,
    )


class GatewayServer(uvicorn.Server):
    """uvicorn's server with the drain on `SIGTERM`; `on_ready` runs once the lifespan start-up is
    done and the server listens (a worker tells its supervisor so, `workers.py`)."""

    def __init__(self, config: GatewayConfig, *, on_ready: Callable[[], object] | None = None) -> None:
        self.gateway = create_app(config)
        self.grace = config.server.shutdown_grace_seconds
        self._drain: asyncio.Future[None] | None = None
        self._on_ready = on_ready
        super().__init__(uvicorn_config(config, self.gateway))

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._drain is not None or not self.started:
            super().handle_exit(sig, frame)
            return
        # A signal handler may run between any two bytecodes of the loop: hand over, don't act.
        loop = asyncio.get_event_loop()
        self._drain = loop.create_future()
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.gateway.runtime.drain(self.grace)
        finally:
            self.should_exit = True


def log_allocator() -> None:
    """Say what Python's objects are allocated by, and whether a burst's memory goes back."""
    used = allocator.in_use()
    fields = {"fields": {"allocator": used}}
    if used == "jemalloc":
        logger.info("memory allocator: jemalloc; memory freed after a burst goes back to the system", extra=fields)
    elif used == "pymalloc, jemalloc unused":
        logger.warning(
            "memory allocator: jemalloc is preloaded but PYTHONMALLOC is not 'malloc', so Python's objects"
            " still use pymalloc and a burst's memory is kept; set PYTHONMALLOC=malloc (docs/operations.md, Memory)",
            extra=fields,
        )
    else:
        logger.info(
            "memory allocator: %s; memory freed after a burst is kept for reuse, not given back to the system"
            " (the container image runs on jemalloc: docs/operations.md, Memory)",
            used,
            extra=fields,
        )


def run(config: GatewayConfig) -> int:
    configure_logging(config.logging, cookie_names=config.auth.cookie_names)
    logger.info("configuration", extra={"fields": {"config": redacted(config)}})
    log_allocator()
    if config.server.workers > 1:
        from .workers import run_workers

        return run_workers(config)
    server = GatewayServer(config)
    server.run()
    logger.info("gateway stopped")
    return 0 if server.started else 1
