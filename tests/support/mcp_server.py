"""A real MCP tool server (fastmcp, from PyPI) that accepts only tokens made for it.

    python -m tests.support.mcp_server --port N --issuer URL --jwks-uri URL --audience URI [--algorithm ES256]

Its bearer tokens are checked by fastmcp's own `JWTVerifier`: signature with a key from
`--jwks-uri`, exact `iss`, `aud` naming `--audience`, `exp`. The one tool, `whoami`, answers with
the subject and scopes of the token it was called with. `GET /health` answers 200 for readiness.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastmcp import FastMCP
from fastmcp.server.auth.providers.jwt import JWTVerifier
from fastmcp.server.dependencies import get_access_token
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def create_app(issuer: str, jwks_uri: str, audience: str, algorithm: str) -> Any:
    verifier = JWTVerifier(jwks_uri=jwks_uri, issuer=issuer, audience=audience, algorithm=algorithm)
    server = FastMCP("tool-server", auth=verifier)

    @server.tool
    def whoami() -> dict[str, Any]:
        """Who the token speaks for."""
        token = get_access_token()
        assert token is not None
        return {"sub": token.claims.get("sub"), "scopes": token.scopes, "aud": token.claims.get("aud")}

    @server.custom_route("/health", methods=["GET"])
    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return server.http_app(path="/mcp")


@dataclass(frozen=True)
class ToolServer:
    url: str  # the MCP endpoint

    @property
    def base(self) -> str:
        return self.url.removesuffix("/mcp")


@contextmanager
def start_tool_server(issuer: str, jwks_uri: str, audience: str, algorithm: str = "ES256") -> Iterator[ToolServer]:
    import sys

    from tests.support.procs import free_port, start_process, stop_process

    port = free_port()
    args = [sys.executable, "-m", "tests.support.mcp_server", "--port", str(port), "--issuer", issuer]
    args += ["--jwks-uri", jwks_uri, "--audience", audience, "--algorithm", algorithm]
    proc = start_process(args, ready_url=f"http://127.0.0.1:{port}/health", timeout=60)
    try:
        yield ToolServer(url=f"http://127.0.0.1:{port}/mcp")
    finally:
        stop_process(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--jwks-uri", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--algorithm", default="ES256")
    args = parser.parse_args()
    app = create_app(args.issuer, args.jwks_uri, args.audience, args.algorithm)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
