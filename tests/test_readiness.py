"""Readiness follows the keys: not ready until every issuer's keys are loaded, and again once they are stale."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from tests.support.chatkit import post, sse_events, user_input
from tests.support.checks import wait_for
from tests.support.gateway import bearer, gateway_config, issuer_entry, start_gateway, user_token
from tests.support.procs import free_port, start_process, stop_process

if TYPE_CHECKING:
    from tests.support.fixtures import Backend
    from tests.support.idp import LoopbackIdP


def test_readyz_reports_each_issuer(gateway: object, session_idp: LoopbackIdP) -> None:
    response = httpx.get(f"{gateway.url}/readyz", trust_env=False)  # type: ignore[attr-defined]
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    (issuer,) = body["issuers"]
    assert issuer["issuer"] == session_idp.issuer and issuer["ready"] is True and issuer["keys"] >= 2


def test_identity_provider_down_at_start_means_not_ready_until_it_answers(backend: Backend, idp: LoopbackIdP) -> None:
    """The gateway starts, says why it is not ready, refuses tokens, and recovers without restart."""
    import sys
    import tempfile
    from pathlib import Path

    import tomli_w

    idp.mode = "down"
    port = free_port()
    config = gateway_config(backend.url, idp, {"server": {"port": port}})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gateway.toml"
        path.write_text(tomli_w.dumps(config))
        url = f"http://127.0.0.1:{port}"
        # Ready means alive here: /healthz answers while /readyz is 503.
        proc = start_process(
            [sys.executable, "-m", "gateway", "serve", "--config", str(path)], ready_url=f"{url}/healthz"
        )
        try:
            not_ready = httpx.get(f"{url}/readyz", trust_env=False)
            assert not_ready.status_code == 503
            assert not_ready.json()["status"] == "not_ready"
            assert idp.issuer in not_ready.json()["reason"]
            refused = httpx.post(
                f"{url}/chatkit",
                json={"type": "threads.list", "params": {}},
                headers=bearer(user_token(idp)),
                trust_env=False,
            )
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unknown_key"

            idp.mode = "ok"
            wait_for(lambda: httpx.get(f"{url}/readyz", trust_env=False).status_code == 200)
            accepted = httpx.post(
                f"{url}/chatkit",
                json={"type": "threads.list", "params": {}},
                headers=bearer(user_token(idp)),
                trust_env=False,
            )
            assert accepted.status_code == 200
        finally:
            stop_process(proc)


def test_keys_past_max_stale_turn_readiness_off_and_fail_closed(backend: Backend, idp: LoopbackIdP) -> None:
    settings = {
        "min_ttl_seconds": 0.2,
        "default_ttl_seconds": 0.3,
        "max_stale_seconds": 1.0,
        "refresh_cooldown_seconds": 0.2,
    }
    config = gateway_config(backend.url, idp, {"auth": {"jwks": settings}})
    with start_gateway(config) as gw:
        token = user_token(idp)
        with httpx.Client(base_url=gw.url, headers=bearer(token), trust_env=False) as client:
            assert post(client, "threads.list", {}).status_code == 200
        idp.mode = "down"
        wait_for(lambda: httpx.get(f"{gw.url}/readyz", trust_env=False).status_code == 503)
        fresh = user_token(idp, sub="someone-new")  # not in the verified-token cache
        refused = httpx.post(
            f"{gw.url}/chatkit", json={"type": "threads.list", "params": {}}, headers=bearer(fresh), trust_env=False
        )
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unknown_key"
        idp.mode = "ok"
        wait_for(lambda: httpx.get(f"{gw.url}/readyz", trust_env=False).status_code == 200)


def test_stream_errors_mode_answers_streaming_ops_in_band(backend: Backend, session_idp: LoopbackIdP) -> None:
    config = gateway_config(backend.url, session_idp, {"auth": {"stream_errors": True}})
    backend.reset()
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url, trust_env=False) as client:
        backend.reset()
        streaming = post(client, "threads.create", {"input": user_input("hi")})
        assert streaming.status_code == 200
        assert streaming.headers["content-type"].startswith("text/event-stream")
        (event,) = sse_events(streaming.content)
        assert event["type"] == "error" and event["code"] == "custom" and event["allow_retry"] is False
        assert "sign in" in event["message"].lower()
        plain = post(client, "threads.list", {})
        assert plain.status_code == 401 and plain.json()["error"]["code"] == "missing_credentials"
    assert backend.requests() == []


def test_two_issuers_each_verify_their_own_tokens(backend: Backend, session_idp: LoopbackIdP, idp: LoopbackIdP) -> None:
    config = gateway_config(
        backend.url,
        session_idp,
        {"auth": {"issuers": [issuer_entry(session_idp, user_id_prefix="a:"), issuer_entry(idp, user_id_prefix="b:")]}},
    )
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url, trust_env=False) as client:
        for provider in (session_idp, idp):
            response = client.post(
                "/chatkit", json={"type": "threads.list", "params": {}}, headers=bearer(user_token(provider))
            )
            assert response.status_code == 200
        # A token naming one issuer but signed by the other's key fails.
        forged = idp.sign({**_claims_of(session_idp)})
        response = client.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=bearer(forged))
        assert response.status_code == 401


def _claims_of(provider: LoopbackIdP) -> dict[str, object]:
    from tests.support.gateway import user_claims

    return user_claims(provider)
