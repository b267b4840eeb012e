"""A real OAuth 2.0 authorization server on loopback: oidc-provider (npm) run by `node`.

`tests/support/node/oidc_server.mjs` registers the RFC 8693 token-exchange grant through
oidc-provider's own `registerGrantType`; `make test` installs the locked npm packages
(`tests/support/node/package-lock.json`). Tokens it issues are JWTs signed with its own key
(`{url}/jwks`), `aud` = the requested resource, `sub` = the subject token's `sub`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.procs import PROJECT_ROOT, free_port, node_openid_server, process_log

SERVER_SCRIPT = PROJECT_ROOT / "tests" / "support" / "node" / "oidc_server.mjs"


@dataclass(frozen=True)
class AuthorizationServer:
    url: str
    process: Any

    @property
    def token_endpoint(self) -> str:
        return f"{self.url}/token"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def exchanges(self) -> int:
        """How many tokens it has issued by exchange so far."""
        count: int = httpx.get(f"{self.url}/_test/exchanges", trust_env=False).json()["exchanges"]
        return count

    def log(self) -> str:
        return process_log(self.process)


@contextmanager
def start_authorization_server(
    *,
    subject_issuer: str,
    subject_jwks_uri: str,
    subject_audience: str,
    clients: Mapping[str, str],
    resources: Mapping[str, Mapping[str, Any]],
    port: int | None = None,
) -> Iterator[AuthorizationServer]:
    """`clients`: client_id -> secret; `resources`: resource URI -> {"scope": "a b", "ttl": seconds}."""
    port = port or free_port()
    settings = {
        "port": port,
        "subject": {"issuer": subject_issuer, "jwks_uri": subject_jwks_uri, "audience": subject_audience},
        "clients": [{"client_id": cid, "client_secret": secret} for cid, secret in clients.items()],
        "resources": resources,
    }
    with node_openid_server(SERVER_SCRIPT, settings) as (url, proc):
        yield AuthorizationServer(url=url, process=proc)
