"""Replicas share owners through one real `redis-server`; when it stops, requests that need it fail
closed (503, nothing forwarded, `/readyz` says why) and work again once it is back, no restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import httpx
import pytest
import redis

from tests.ownership.conftest import listed, refused_unseen, signed_in, thread_of
from tests.support.chatkit import post, user_input
from tests.support.checks import assert_error, wait_for
from tests.support.gateway import RunningGateway, gateway_config, start_gateway
from tests.support.redis import start_redis

if TYPE_CHECKING:
    from tests.support.fixtures import Backend
    from tests.support.idp import LoopbackIdP
    from tests.support.redis import RedisServer


@pytest.fixture(scope="module")
def replicas(backend: Backend, session_idp: LoopbackIdP, redis_server: RedisServer) -> Iterator[list[RunningGateway]]:
    config = gateway_config(backend.url, session_idp, {"ownership": {"store": "redis", "redis_url": redis_server.url}})
    with ExitStack() as stack:
        yield [stack.enter_context(start_gateway(config)) for _ in range(2)]


def test_replicas_share_owners(
    replicas: list[RunningGateway], session_idp: LoopbackIdP, clean_backend: Backend, redis_server: RedisServer
) -> None:
    one, two = replicas
    # The session's Redis is shared with other tests: users of this test's own.
    alice_id, bob_id = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    with ExitStack() as stack:
        alice_one = stack.enter_context(signed_in(one, session_idp, alice_id))
        alice_two = stack.enter_context(signed_in(two, session_idp, alice_id))
        bob_two = stack.enter_context(signed_in(two, session_idp, bob_id))
        thread = thread_of(alice_one)

        assert_error(refused_unseen(clean_backend, bob_two, "items.list", {"thread_id": thread}), 404, "not_found")
        assert post(alice_two, "items.list", {"thread_id": thread}).status_code == 200
        assert listed(alice_two) == [thread]
        assert listed(bob_two) == []

        assert post(alice_two, "threads.delete", {"thread_id": thread}).status_code == 200
        with redis.Redis.from_url(redis_server.url) as client:
            assert client.get(f"chatkit-gateway:owner:{thread}") is None


def test_redis_stopped_mid_run_fails_closed_then_recovers_without_a_restart(
    clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    with start_redis() as server:
        config = gateway_config(
            clean_backend.url, session_idp, {"ownership": {"store": "redis", "redis_url": server.url}}
        )
        with start_gateway(config) as gateway, signed_in(gateway, session_idp, "alice") as alice:
            thread_of(alice)
            server.stop()

            create = {"input": user_input("hi")}
            assert_error(refused_unseen(clean_backend, alice, "threads.create", create), 503, "ownership_unavailable")
            attach = {"name": "a.txt", "size": 1, "mime_type": "text/plain"}
            assert_error(
                refused_unseen(clean_backend, alice, "attachments.create", attach), 503, "ownership_unavailable"
            )
            unseen = {"thread_id": "thr_not_seen_yet"}
            assert_error(refused_unseen(clean_backend, alice, "items.list", unseen), 503, "ownership_unavailable")
            before = len(clean_backend.requests())
            upload = alice.post("/chatkit/uploads/files", files={"file": ("a.txt", b"abc", "text/plain")})
            assert_error(upload, 503, "ownership_unavailable")
            assert len(clean_backend.requests()) == before
            ready = httpx.get(f"{gateway.url}/readyz", trust_env=False)
            assert ready.status_code == 503
            assert "ownership store (redis)" in ready.json()["reason"]
            assert "ownership store (redis) failed" in gateway.log()
            metrics = httpx.get(f"{gateway.url}/metrics", trust_env=False).text
            assert "chatkit_gateway_ownership_store_errors_total{reason=" in metrics

            server.start()
            wait_for(lambda: httpx.get(f"{gateway.url}/readyz", trust_env=False).status_code == 200)
            thread = thread_of(alice)
            with signed_in(gateway, session_idp, "bob") as bob:
                assert_error(refused_unseen(clean_backend, bob, "items.list", {"thread_id": thread}), 404, "not_found")
