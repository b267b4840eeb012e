"""A stream ends with its session: at the token's `exp` plus `auth.stream_grace_seconds`, with a
ChatKit error event, the backend seeing the disconnect; `-1` never ends it; one whose end has
already passed gets its first event, then the end."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.chatkit import LiveStream, saw_cancellation
from tests.support.checks import metric
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, gateway_config, start_gateway, user_claims
from tests.support.idp import LoopbackIdP


@pytest.fixture(scope="module")
def no_grace(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    with start_gateway(gateway_config(backend.url, session_idp, {"auth": {"stream_grace_seconds": 0}})) as running:
        yield running


def short_lived(idp: LoopbackIdP, seconds: float) -> str:
    claims = user_claims(idp, "short-lived")
    return idp.sign({**claims, "exp": int(time.time() + seconds)})


def test_a_stream_ends_at_the_tokens_expiry_with_an_error_event(
    no_grace: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    token = short_lived(session_idp, 2)
    expires = time.monotonic() + (int(time.time() + 2) - time.time())
    stream = LiveStream(no_grace.url, token)
    try:
        stream.wait_for_events(3)
        assert not stream.ended.is_set()
        assert stream.ended.wait(10)
        assert stream.ended_at is not None and stream.ended_at >= expires - 0.1
        last = stream.events[-1]
        assert last["type"] == "error" and last["code"] == "custom" and last["allow_retry"] is False
        assert saw_cancellation(clean_backend, stream.thread_id)
    finally:
        stream.close()
    metrics = httpx.get(f"{no_grace.url}/metrics", trust_env=False).text
    assert metric(metrics, "chatkit_gateway_streams_ended_total", op="threads.create", reason="session_expired") >= 1


def test_a_stream_whose_session_already_ended_gets_its_first_event_then_the_end(
    no_grace: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    token = short_lived(session_idp, -5)  # past exp, still within the issuer's 30 s leeway
    stream = LiveStream(no_grace.url, token)
    try:
        assert stream.ended.wait(10)
        assert stream.status == 200
        assert [event["type"] for event in stream.events] == ["thread.created", "error"]
        assert stream.events[-1]["allow_retry"] is False
        assert saw_cancellation(clean_backend, stream.thread_id)
    finally:
        stream.close()


def test_with_grace_minus_one_a_stream_outlives_its_token(
    backend: Backend, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    config = gateway_config(backend.url, session_idp, {"auth": {"stream_grace_seconds": -1}})
    with start_gateway(config) as running:
        exp = time.time() + 1
        stream = LiveStream(running.url, short_lived(session_idp, 1))
        try:
            stream.wait_for_events(2)
            while time.time() < exp + 1:
                time.sleep(0.1)
            seen = len(stream.events)
            stream.wait_for_events(seen + 3)  # still flowing a second after exp
            assert not stream.ended.is_set()
        finally:
            stream.close()
