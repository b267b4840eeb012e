"""Two gateway replicas sharing one real `redis-server`: a revocation made at either ends the
user's streams on both within a second and refuses the user's requests on both; a restart of Redis
(without persistence) lifts nothing; while Redis cannot be reached, requests fail closed (503)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.chatkit import LiveStream, saw_cancellation
from tests.support.checks import assert_error, metric, wait_for
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, start_gateway, user_token
from tests.support.idp import LoopbackIdP
from tests.support.redis import RedisServer, start_redis
from tests.support.revocation import admin, ask, logout, logout_claims, revocation_config, write_admin_token


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with start_redis() as server:
        yield server


@pytest.fixture(scope="module")
def replicas(
    backend: Backend, session_idp: LoopbackIdP, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    token_file = write_admin_token(tmp_path_factory.mktemp("admin"))
    config = revocation_config(backend.url, session_idp, token_file, store="redis", redis_url=redis.url)
    with start_gateway(config) as first, start_gateway(config) as second:
        yield first, second


def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def test_an_admin_revocation_ends_the_users_streams_on_both_replicas(
    replicas: tuple[RunningGateway, RunningGateway], clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    first, second = replicas
    sub = user()
    token = user_token(session_idp, sub)
    streams = [LiveStream(first.url, token), LiveStream(second.url, token)]
    bystander = LiveStream(second.url, user_token(session_idp, user()))
    try:
        for stream in [*streams, bystander]:
            stream.wait_for_events(3)
        revoked_at = time.monotonic()
        assert admin(first.url, {"iss": session_idp.issuer, "sub": sub}).status_code == 204
        for stream in streams:
            assert stream.ended.wait(5)
            assert stream.ended_at is not None and stream.ended_at - revoked_at < 1.0
            assert stream.events[-1]["type"] == "error" and stream.events[-1]["allow_retry"] is False
            assert saw_cancellation(clean_backend, stream.thread_id)
        bystander.wait_for_events(len(bystander.events) + 3)
        assert not bystander.ended.is_set()
    finally:
        for stream in [*streams, bystander]:
            stream.close()
    for replica in replicas:
        assert_error(ask(replica.url, token), 401, "token_revoked")
        assert_error(ask(replica.url, user_token(session_idp, sub)), 401, "token_revoked")
    second_metrics = httpx.get(f"{second.url}/metrics", trust_env=False).text
    assert metric(second_metrics, "chatkit_gateway_streams_ended_total", op="threads.create", reason="revoked") >= 1
    # Lifted at the other replica: both serve the user again.
    assert admin(second.url, {"iss": session_idp.issuer, "sub": sub}, method="DELETE").status_code == 204
    for replica in replicas:
        wait_for(lambda replica=replica: ask(replica.url, token).status_code == 200, timeout=5)


def test_a_logout_at_one_replica_ends_that_session_on_the_other(
    replicas: tuple[RunningGateway, RunningGateway], clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    first, second = replicas
    sub, sid = user(), uuid.uuid4().hex
    stream = LiveStream(first.url, user_token(session_idp, sub, sid=sid))
    other_session = LiveStream(first.url, user_token(session_idp, sub, sid=uuid.uuid4().hex))
    try:
        stream.wait_for_events(3)
        other_session.wait_for_events(3)
        sent_at = time.monotonic()
        token = session_idp.sign(logout_claims(session_idp, sub=sub, sid=sid))
        assert logout(second.url, token).status_code == 200
        assert stream.ended.wait(5)
        assert stream.ended_at is not None and stream.ended_at - sent_at < 1.0
        assert saw_cancellation(clean_backend, stream.thread_id)
        other_session.wait_for_events(len(other_session.events) + 3)
        # Replayed at the other replica: the jti is shared too.
        assert_error(logout(first.url, token), 400, "invalid_logout_token")
    finally:
        stream.close()
        other_session.close()


def test_entries_survive_a_redis_restart_and_an_unreachable_redis_fails_closed(
    replicas: tuple[RunningGateway, RunningGateway], redis: RedisServer, session_idp: LoopbackIdP
) -> None:
    sub = user()
    revoked, fine = user_token(session_idp, sub), user_token(session_idp, user())
    assert admin(replicas[0].url, {"iss": session_idp.issuer, "sub": sub}).status_code == 204
    for replica in replicas:
        wait_for(lambda replica=replica: ask(replica.url, revoked).status_code == 401, timeout=5)
    redis.stop()
    try:
        for replica in replicas:
            wait_for(lambda replica=replica: ask(replica.url, fine).status_code == 503, timeout=10)
            assert_error(ask(replica.url, fine), 503, "revocation_unavailable")
            # And readiness says why, so the platform stops sending traffic to it.
            ready = httpx.get(f"{replica.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["reason"] == "the revocation store (redis) cannot be reached"
        assert_error(admin(replicas[0].url, {"jti": "x"}), 503, "revocation_unavailable")
    finally:
        redis.start()  # the same port, and no data: the list is gone from Redis
    for replica in replicas:
        wait_for(lambda replica=replica: ask(replica.url, fine).status_code == 200, timeout=15)
        assert_error(ask(replica.url, revoked), 401, "token_revoked")
        assert httpx.get(f"{replica.url}/readyz").status_code == 200
    # And the list is whole in Redis again: a replica started now learns it from there.
    with start_gateway(replicas[0].config, port=None) as third:
        assert_error(ask(third.url, revoked), 401, "token_revoked")
        assert ask(third.url, fine).status_code == 200
