"""What every endpoint of the gateway does around its own work, written once.

An `Endpoint` is a pure ASGI app (streams pass through untouched). For each request it:

- opens the request's `Exchange` (request id, route, op, start time) and hands it to `handle`;
- turns a `GatewayError` into its JSON error body (`responses.send_error`);
- records a client that went away (`ClientDisconnected`): nobody is left to answer;
- answers anything else with a JSON 500 and logs the traceback (never the request's credentials
  or body): nothing a client sends should get there;
- writes the request's log line and metrics (`Observer.finish`) when it ends, at stream end for
  streams.

If the response has already started when an error comes, a second start is refused by the
server (uvicorn raises `RuntimeError`): the error is then only logged and counted, and the client
sees the response end early.

Subclasses set `route` (and `op` when the route has one) and implement `handle`; a new endpoint
is one class and one line in `create_app`'s routes:

    class RevocationsEndpoint(Endpoint):
        route = "admin_revocations"

        async def handle(self, scope, receive, send, exchange):
            ...  # raise a GatewayError to refuse; send the answer otherwise

    Route("/admin/revocations", RevocationsEndpoint(runtime.observer), methods=["POST", "DELETE"])
"""

from __future__ import annotations

import abc
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from .body import ClientDisconnected
from .errors import GatewayError
from .headers import Headers
from .observe import Exchange, Observer
from .outbound import request_id_from
from .responses import send_error

if TYPE_CHECKING:
    from .tracing import Tracing

__all__ = ["Endpoint"]

logger = logging.getLogger("chatkit_gateway")


class Endpoint(abc.ABC):
    """The base of the gateway's endpoints: `handle` does the work, `__call__` the rest."""

    route: str = "-"  # the name the access log and the metrics use
    op: str = "-"  # the op when the route has only one; `handle` may set it (`exchange.set_op`)

    def __init__(self, observer: Observer, *, tracing: Tracing | None = None, http_route: str = "") -> None:
        self.observer = observer
        # With tracing on, each request is a server span (ended with the exchange, `Observer.finish`).
        self.tracing = tracing
        self.http_route = http_route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = scope["headers"]
        exchange = Exchange(request_id_from(headers), self.route, time.monotonic(), scope["method"], op=self.op)
        if self.tracing is not None:
            exchange.trace = self.tracing.start(
                headers, method=scope["method"], path=scope["path"], scheme=scope["scheme"], route=self.http_route
            )
        try:
            await self.handle(scope, receive, send, exchange)
        except GatewayError as error:
            exchange.status, exchange.error = error.status, error.code
            await _answer(send, error, exchange.request_id)
        except ClientDisconnected:
            exchange.client_disconnected = True
        except Exception:
            logger.exception("unhandled error in %s", self.route)
            exchange.status, exchange.error = 500, "internal_error"
            await _answer(send, GatewayError(), exchange.request_id)
        finally:
            self.observer.finish(exchange)

    @abc.abstractmethod
    async def handle(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        """Answer the request, filling in `exchange`; raise a `GatewayError` to refuse it."""


async def _answer(send: Send, error: GatewayError, request_id: str) -> None:
    with contextlib.suppress(RuntimeError):  # the response had started: see the module's docstring
        await send_error(send, error, request_id)
