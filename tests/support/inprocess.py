"""The gateway in the test's own process: `create_app(config, transport=..., jwks_transport=...,
clock=...)` behind `httpx.ASGITransport`, its lifespan driven as a server drives it.

Its peers are the same real applications the subprocess tests run, served in-process: the
ChatKit backend of `tests.support.backend` (a real `ChatKitServer`) as the upstream, and the
`LoopbackIdP`'s discovery and JWKS app as the identity provider. No socket is opened, so a rule
(what is refused, what reaches the backend, what comes back) is checked in milliseconds.

httpx's `ASGITransport` collects a whole response before returning it, so this layer cannot show
streaming, disconnects or timing: those stay with the real-process tests.

    async with in_process_gateway(idp, {"auth": {"stream_errors": True}}) as gw:
        response = await gw.client.post("/chatkit", json=..., headers=bearer(user_token(idp)))
        assert (await gw.backend_requests()) == []
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message

from gateway.app import Gateway, create_app
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import build_config
from tests.support.backend import create_backend_app
from tests.support.gateway import gateway_config
from tests.support.idp import LoopbackIdP

__all__ = ["GATEWAY_URL", "InProcessGateway", "in_process_gateway", "in_process_idp", "lifespan"]

GATEWAY_URL = "http://gateway.test"
BACKEND_URL = "http://backend.test"
# The IdP is never started: its app answers through `jwks_transport`, whatever the URL's port.
IDP_PORT = 9


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Run `app`'s ASGI lifespan as uvicorn does: startup before the block, shutdown after it.
    A failed startup raises here, with the app's own exception when it has one."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await _next_message(from_app, task)
    if started["type"] != "lifespan.startup.complete":
        await task  # starlette re-raises the startup error after reporting it
        raise RuntimeError(f"lifespan startup failed: {started.get('message', '')}")
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await _next_message(from_app, task)
        await task


async def _next_message(queue: asyncio.Queue[Message], task: asyncio.Future[None]) -> Message:
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    task.result()  # the app ended without answering: its exception, if any
    raise RuntimeError("the app ended its lifespan without answering")


@dataclass
class InProcessGateway:
    app: Gateway
    client: httpx.AsyncClient  # to the gateway, at GATEWAY_URL
    backend: httpx.AsyncClient  # to the backend app directly, for its `/_debug` views

    async def backend_requests(self) -> list[dict[str, Any]]:
        """Every request the backend received (method, path, headers, body, json), less the
        `OPTIONS` of the gateway's start-up warm-up."""
        response = await self.backend.get("/_debug/requests")
        response.raise_for_status()
        requests: list[dict[str, Any]] = response.json()
        return [request for request in requests if request["method"] != "OPTIONS"]


@asynccontextmanager
async def in_process_gateway(
    idp: LoopbackIdP, overrides: Mapping[str, Any] | None = None, *, clock: Clock = SYSTEM_CLOCK
) -> AsyncIterator[InProcessGateway]:
    """A started gateway in front of a fresh in-process backend, trusting `idp`."""
    backend_app = create_backend_app(delay=0.0, public_base=BACKEND_URL)
    config = build_config(gateway_config(BACKEND_URL, idp, overrides))
    app = create_app(
        config,
        transport=httpx.ASGITransport(app=backend_app),
        jwks_transport=httpx.ASGITransport(app=idp.app),
        clock=clock,
    )
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=GATEWAY_URL) as client,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=backend_app), base_url=BACKEND_URL) as backend,
    ):
        yield InProcessGateway(app=app, client=client, backend=backend)


@pytest.fixture(scope="module")
def in_process_idp() -> Iterator[LoopbackIdP]:
    """An identity provider whose keys and tokens the in-process gateways of a module share."""
    provider = LoopbackIdP()
    provider.port = IDP_PORT
    yield provider
