"""The gateway as users run it: `python -m gateway serve --config FILE`, as a subprocess on loopback.

`gateway_config()` builds the config mapping the tests start from (JSON logs, the test backend as
upstream, a placeholder issuer until a test names its own); `start_gateway()` writes it as TOML,
starts the process and waits for `/readyz`.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import tomli_w

from tests.support.procs import free_port, process_log, start_process, stop_process

AUDIENCE = "chatkit"
TOKEN_LIFETIME = 3600


class Issuer(Protocol):
    """What the gateway's tests need of an identity provider (tests.support.idp.LoopbackIdP)."""

    @property
    def issuer(self) -> str: ...

    @property
    def jwks_url(self) -> str: ...

    def sign(self, payload: Mapping[str, Any], *, kid: str | None = None, alg: str | None = None) -> str: ...


def issuer_entry(idp: Issuer, **settings: Any) -> dict[str, Any]:
    return {
        "issuer": idp.issuer,
        "jwks_url": idp.jwks_url,
        "audiences": [AUDIENCE],
        "algorithms": ["RS256", "ES256"],
        **settings,
    }


def user_claims(idp: Issuer, sub: str = "user-1", **claims: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": idp.issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + TOKEN_LIFETIME, **claims}


def user_token(idp: Issuer, sub: str = "user-1", **claims: Any) -> str:
    """A valid token for `sub`, signed by the provider's current key."""
    return idp.sign(user_claims(idp, sub, **claims))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class RunningGateway:
    url: str
    process: subprocess.Popen[bytes]
    config: Mapping[str, Any]

    @property
    def chatkit_url(self) -> str:
        return self.url + self.config.get("server", {}).get("chatkit_path", "/chatkit")

    @property
    def uploads_url(self) -> str:
        return self.url + self.config.get("server", {}).get("uploads_path", "/chatkit/uploads/")

    def log(self) -> str:
        return process_log(self.process)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it, table by table."""
    result = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


# Ownership records of the gateways the tests start: the default `sqlite_path` is relative to the
# working directory (the repository, for every process the tests start).
_OWNERSHIP_FILES = tempfile.TemporaryDirectory(prefix="chatkit-gateway-test-ownership-")


def gateway_config(upstream_base: str, idp: Issuer, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The tests' starting config; each call gets an ownership file of its own (set `sqlite_path`
    to share one between gateways)."""
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1"},
        # The test backend's uploads prefix (tests.support.backend.UPLOADS_PREFIX).
        "upstream": {"url": f"{upstream_base}/chatkit", "uploads_url": f"{upstream_base}/uploads/"},
        "auth": {"issuers": [issuer_entry(idp)]},
        "ownership": {"sqlite_path": str(Path(_OWNERSHIP_FILES.name) / f"{uuid.uuid4().hex}.sqlite3")},
        "logging": {"level": "info", "format": "json"},
    }
    return merge(base, overrides or {})


@contextmanager
def start_gateway(
    config: Mapping[str, Any],
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/readyz",
) -> Iterator[RunningGateway]:
    """The gateway on `config`, once `ready_path` answers 200 (`/healthz` for one that is not ready)."""
    port = port or free_port()
    config = merge(config, {"server": {"port": port}})
    with tempfile.TemporaryDirectory(prefix="chatkit-gateway-test-") as folder:
        path = Path(folder) / "gateway.toml"
        path.write_text(tomli_w.dumps(dict(config)), encoding="utf-8")
        args = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
        url = f"http://127.0.0.1:{port}"
        proc = start_process(args, env=env, ready_url=f"{url}{ready_path}")
        try:
            yield RunningGateway(url=url, process=proc, config=config)
        finally:
            stop_process(proc)
