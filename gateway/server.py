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
from types import FrameType

import uvicorn

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
        # ignored and HTTP/1.0 answered close-delimited (`protocol.py`).
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
    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = create_app(config)
        self.grace = config.server.shutdown_grace_seconds
        self._drain: asyncio.Future[None] | None = None
        super().__init__(uvicorn_config(config, self.gateway))

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


def run(config: GatewayConfig) -> int:
    configure_logging(config.logging, cookie_names=config.auth.cookie_names)
    logger.info("configuration", extra={"fields": {"config": redacted(config)}})
    server = GatewayServer(config)
    server.run()
    logger.info("gateway stopped")
    return 0 if server.started else 1
