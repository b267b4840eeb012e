"""TLS to the backend with certificates made here: a private CA and a name of the backend's own
(`upstream.ca_file`, `upstream.server_name`), mutual TLS (`upstream.client_cert_file` and a key
from a secret path), and what a refused certificate does to a request, the log and `/readyz`."""

from __future__ import annotations

import ssl
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import ConfigError, UpstreamConfig
from gateway.tls import upstream_ssl_context
from gateway.upstream import Upstream
from tests.support.certs import CertificateAuthority
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_token
from tests.support.idp import LoopbackIdP
from tests.support.procs import free_port, start_process, stop_process

BACKEND_NAME = "chatkit-backend.internal"  # the only name in the backend's certificate
LIST = {"type": "threads.list", "params": {}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    trusted, stranger, clients = (CertificateAuthority(folder, name) for name in ("trusted", "stranger", "clients"))
    server_cert, server_key = trusted.issue("backend", dns=(BACKEND_NAME,))
    stranger_cert, stranger_key = stranger.issue("impostor", dns=(BACKEND_NAME,))
    client_cert, client_key = clients.issue("gateway-client", client=True)
    return {
        "ca": trusted.pem,
        "client_ca": clients.pem,
        "server_cert": server_cert,
        "server_key": server_key,
        "stranger_cert": stranger_cert,
        "stranger_key": stranger_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


@contextmanager
def tls_backend(
    pki: dict[str, Path], *, port: int | None = None, impostor: bool = False, mtls: bool = False
) -> Iterator[str]:
    """The conformance app on uvicorn over TLS; its https base URL (by address, not by name)."""
    port = port or free_port()
    cert, key = (pki["stranger_cert"], pki["stranger_key"]) if impostor else (pki["server_cert"], pki["server_key"])
    args = [sys.executable, "-m", "uvicorn", "tests.support.interop:app", "--port", str(port), "--log-level", "warning"]
    args += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    probe = ssl.create_default_context(cafile=pki["stranger_cert" if impostor else "ca"])
    probe.check_hostname = False
    if impostor:
        probe.verify_mode = ssl.CERT_NONE
    if mtls:
        args += ["--ssl-ca-certs", str(pki["client_ca"]), "--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))]
        probe.load_cert_chain(pki["client_cert"], pki["client_key"])
    url = f"https://127.0.0.1:{port}"
    proc = start_process(args, ready_url=f"{url}/ready", verify=probe)
    try:
        yield url
    finally:
        stop_process(proc)


def tls_gateway(backend: str, idp: LoopbackIdP, **upstream: Any) -> dict[str, Any]:
    return gateway_config(backend, idp, {"upstream": {key: str(value) for key, value in upstream.items()}})


def list_threads(gateway: RunningGateway, idp: LoopbackIdP) -> httpx.Response:
    return httpx.post(gateway.chatkit_url, json=LIST, headers=bearer(user_token(idp)), trust_env=False, timeout=20)


def readiness(gateway: RunningGateway) -> httpx.Response:
    return httpx.get(f"{gateway.url}/readyz", trust_env=False, timeout=5)


def test_a_backend_with_a_private_ca_is_reached_by_the_name_in_its_certificate(
    pki: dict[str, Path], session_idp: LoopbackIdP
) -> None:
    with tls_backend(pki) as backend:
        config = tls_gateway(backend, session_idp, ca_file=pki["ca"], server_name=BACKEND_NAME)
        with start_gateway(config) as gateway:
            response = list_threads(gateway, session_idp)
            assert response.status_code == 200, response.text
            assert response.json()["received"] > 0  # the backend's own answer
            assert readiness(gateway).status_code == 200


def test_mutual_tls_with_the_client_key_from_a_secret_path(pki: dict[str, Path], session_idp: LoopbackIdP) -> None:
    with tls_backend(pki, mtls=True) as backend:
        config = tls_gateway(
            backend, session_idp, ca_file=pki["ca"], server_name=BACKEND_NAME, client_cert_file=pki["client_cert"]
        )
        env = {"CHATKIT_GATEWAY__UPSTREAM__CLIENT_KEY_FILE": str(pki["client_key"])}
        with start_gateway(config, env=env) as gateway:
            assert list_threads(gateway, session_idp).status_code == 200


def test_a_backend_that_refuses_the_gateway_without_a_client_certificate_gets_a_502(
    pki: dict[str, Path], session_idp: LoopbackIdP
) -> None:
    # Under TLS 1.3 the refusal comes after the handshake, as a closed connection: a 502 all the same.
    with tls_backend(pki, mtls=True) as backend:
        config = tls_gateway(backend, session_idp, ca_file=pki["ca"], server_name=BACKEND_NAME)
        with start_gateway(config, ready_path="/healthz") as gateway:
            response = list_threads(gateway, session_idp)
            assert response.status_code == 502
            assert response.json()["error"]["code"] == "upstream_unavailable"


def test_an_untrusted_certificate_is_a_502_with_its_reason_logged_and_readyz_503_until_the_handshake_passes(
    pki: dict[str, Path], session_idp: LoopbackIdP
) -> None:
    port = free_port()
    impostor = ExitStack()
    backend = impostor.enter_context(tls_backend(pki, port=port, impostor=True))
    config = tls_gateway(backend, session_idp, ca_file=pki["ca"], server_name=BACKEND_NAME)
    with impostor, start_gateway(config, ready_path="/healthz") as gateway:
        response = list_threads(gateway, session_idp)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unavailable"
        ready = readiness(gateway)
        assert ready.status_code == 503
        assert "TLS" in ready.json()["reason"] and "certificate verify failed" in ready.json()["reason"]
        assert "certificate verify failed" in gateway.log()
        # The impostor goes; the real backend comes up at the same address: ready again by itself.
        impostor.close()
        with tls_backend(pki, port=port):
            deadline = time.monotonic() + 15
            while readiness(gateway).status_code != 200:
                assert time.monotonic() < deadline, readiness(gateway).text
                time.sleep(0.2)
            assert list_threads(gateway, session_idp).status_code == 200


def test_a_backend_that_is_merely_unreachable_does_not_make_the_gateway_unready(session_idp: LoopbackIdP) -> None:
    config = gateway_config(f"http://127.0.0.1:{free_port()}", session_idp)
    with start_gateway(config) as gateway:  # waits for /readyz 200
        assert readiness(gateway).json()["status"] == "ready"
        assert list_threads(gateway, session_idp).json()["error"]["code"] == "upstream_unavailable"


def test_both_upstream_transports_share_one_context_made_at_start_up(pki: dict[str, Path]) -> None:
    upstream = Upstream(UpstreamConfig(url="https://backend.internal/chatkit", ca_file=str(pki["ca"])))
    transports = (upstream.json_transport, upstream.stream_transport)
    contexts = {id(transport._ssl_context) for transport in transports}  # type: ignore[attr-defined]
    assert len(contexts) == 1 and None not in contexts


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"ca_file": "/nonexistent/ca.pem"}, "upstream.ca_file"),
        (
            {"client_cert_file": "/nonexistent/cert.pem", "client_key_file": "/nonexistent/key"},
            "upstream.client_cert_file",
        ),
    ],
    ids=["missing-ca", "missing-client-certificate"],
)
def test_a_tls_file_that_cannot_be_loaded_is_a_config_error_naming_the_key(
    settings: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        upstream_ssl_context(UpstreamConfig(url="https://backend.internal/chatkit", **settings))


def test_tls_settings_for_a_plain_http_backend_are_a_config_error() -> None:
    with pytest.raises(ValueError, match="https"):
        UpstreamConfig(url="http://backend.internal/chatkit", ca_file="/etc/ssl/ca.pem")
