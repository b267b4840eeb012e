"""End to end with a real OpenID provider (npm oidc-provider): a user signs in there, chats
through the gateway with the ID token, and signs out there; the provider's back-channel logout
ends the open stream and the session's token is refused from then on."""

from __future__ import annotations

from tests.support.chatkit import LiveStream, saw_cancellation
from tests.support.checks import assert_error
from tests.support.fixtures import Backend
from tests.support.gateway import gateway_config, start_gateway
from tests.support.idp import LoopbackIdP
from tests.support.oidc_logout import CLIENT_ID, start_openid_provider
from tests.support.procs import free_port
from tests.support.revocation import ask


def test_a_sign_out_at_the_provider_ends_the_stream_and_the_session(backend: Backend, session_idp: LoopbackIdP) -> None:
    port = free_port()
    with start_openid_provider(f"http://127.0.0.1:{port}/auth/backchannel-logout") as provider:
        issuer = {
            "issuer": provider.url,  # keys found by OIDC discovery
            "audiences": [CLIENT_ID],
            "algorithms": ["RS256"],
            "backchannel_audience": CLIENT_ID,
        }
        config = gateway_config(
            backend.url, session_idp, {"auth": {"issuers": [issuer]}, "revocation": {"enabled": True}}
        )
        with start_gateway(config, port=port) as gateway:
            ended, kept = provider.sign_in("alice"), provider.sign_in("alice")
            assert ended.claims["sid"] != kept.claims["sid"]
            stream = LiveStream(gateway.url, ended.id_token)
            try:
                stream.wait_for_events(3)
                provider.sign_out(ended)
                assert provider.deliveries()["success"] == 1, provider.deliveries()
                assert stream.ended.wait(5)
                assert stream.events[-1]["type"] == "error" and stream.events[-1]["allow_retry"] is False
                assert saw_cancellation(backend, stream.thread_id)
            finally:
                stream.close()
                ended.close()
                kept.close()
            assert_error(ask(gateway.url, ended.id_token), 401, "token_revoked")
            assert ask(gateway.url, kept.id_token).status_code == 200  # the other session goes on
