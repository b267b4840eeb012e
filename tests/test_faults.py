"""Fault injection (issue 9): identity provider and upstream faults against the real gateway process.

Identity provider faults run a gateway subprocess per test against a fresh loopback IdP
(`tests.support.idp`) with small `auth.jwks` settings, so TTLs, cooldowns and stale windows pass
within a test. Upstream faults share one gateway in front of a raw-socket upstream that
misbehaves on request (`tests.support.faulty_upstream`); each case ends with the right status or
ChatKit error event, and with no connection or file descriptor left behind by the gateway
(`bench.measure.established_to`, `bench.measure.fd_count`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from bench.measure import established_to, fd_count, wait_until
from tests.support.chatkit import post, sse_events, user_input
from tests.support.faulty_upstream import (
    FIRST_EVENT,
    HALF_FRAME,
    FaultyUpstream,
    big_line_event,
    running_faulty_upstream,
)
from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, bearer, gateway_config, start_gateway, user_claims, user_token
from tests.support.idp import LoopbackIdP
from tests.support.procs import free_port, start_process, stop_process

FETCH_TIMEOUT = 0.5
COOLDOWN = 0.5
MAX_STALE = 2.0
# Small JWKS settings: keys live for the default TTL (300 s) unless a test shortens it, so only an
# unknown kid, a test's own trigger, or the retry after a failure fetches.
FAST_JWKS = {
    "min_ttl_seconds": 0.5,
    "refresh_cooldown_seconds": COOLDOWN,
    "max_stale_seconds": MAX_STALE,
    "fetch_timeout_seconds": FETCH_TIMEOUT,
}
LIST = {"type": "threads.list", "params": {}}


# -- helpers -------------------------------------------------------------------------------------


def ask(client: httpx.Client, token: str) -> tuple[int, str | None]:
    """A `threads.list` with `token`: the status, and the error code of a refusal."""
    response = client.post("/chatkit", json=LIST, headers=bearer(token))
    code = response.json().get("error", {}).get("code") if response.status_code != 200 else None
    return response.status_code, code


def log_entries(gw: RunningGateway) -> list[dict[str, Any]]:
    entries = []
    for line in gw.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def wait_for_log(
    gw: RunningGateway, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [entry for entry in log_entries(gw) if predicate(entry)]
        return bool(found)

    assert wait_until(seen, timeout) is not None, "no such log line:\n" + gw.log()[-4000:]
    return found[0]


def jwks_warning(idp: LoopbackIdP, reason: str) -> Callable[[dict[str, Any]], bool]:
    """A warning from the JWKS cache that names the issuer and `reason`."""

    def match(entry: dict[str, Any]) -> bool:
        message = str(entry.get("message", ""))
        return (
            entry.get("level") == "warning"
            and entry.get("logger") == "chatkit_gateway.jwks"
            and idp.issuer in message
            and reason in message
        )

    return match


def readyz(gw: RunningGateway) -> httpx.Response:
    return httpx.get(f"{gw.url}/readyz", trust_env=False, timeout=5)


def unpublished_kid(idp: LoopbackIdP) -> str:
    """A kid the provider can sign with but does not publish: unknown to the gateway for good."""
    kid = idp.add_key("RSA")
    idp.remove_key(kid)
    return kid


def fetches_since(idp: LoopbackIdP, moment: float) -> list[float]:
    return [t for t in list(idp.jwks_fetch_times) if t >= moment]


@contextmanager
def start_unready_gateway(config: Mapping[str, Any]) -> Iterator[RunningGateway]:
    """`start_gateway`, but waiting for `/healthz` only: readiness is what the test looks at."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    with tempfile.TemporaryDirectory(prefix="chatkit-gateway-test-") as folder:
        path = Path(folder) / "gateway.toml"
        path.write_text(tomli_w.dumps(dict(config)), encoding="utf-8")
        url = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
        proc: subprocess.Popen[bytes] = start_process(args, ready_url=f"{url}/healthz")
        try:
            yield RunningGateway(url=url, process=proc, config=config)
        finally:
            stop_process(proc)


# -- identity provider faults --------------------------------------------------------------------


def test_idp_down_at_start_not_ready_logged_backoff_then_ready_without_restart(
    backend: Backend, idp: LoopbackIdP
) -> None:
    idp.mode = "down"
    config = gateway_config(backend.url, idp, {"auth": {"jwks": FAST_JWKS}})
    with start_unready_gateway(config) as gw, httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as client:
        # Not ready, and says for which issuer and why.
        answer = readyz(gw)
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "not_ready" and idp.issuer in body["reason"]
        (issuer,) = body["issuers"]
        assert issuer["ready"] is False and issuer["keys"] == 0 and "HTTP 500" in issuer["last_error"]
        wait_for_log(gw, jwks_warning(idp, "JWKS answered HTTP 500"))

        # Retries in the background with a growing delay (1 s, then 2 s), not in a tight loop.
        assert wait_until(lambda: idp.jwks_fetches >= 3, timeout=8) is not None, idp.jwks_fetch_times
        first, second, third = idp.jwks_fetch_times[:3]
        assert 0.7 <= second - first <= 2.0
        assert third - second >= 1.5 * (second - first)

        # Requests while it is down: refused, and not one fetch each.
        before = idp.jwks_fetches
        started = time.monotonic()
        refusals = set()
        for i in range(50):
            refusals.add(ask(client, user_token(idp, sub=f"down-{i}")))
            time.sleep(0.03)
        spent = time.monotonic() - started
        fetched = idp.jwks_fetches - before
        assert refusals == {(401, "unknown_key")}
        # At most one fetch per cooldown, plus a background retry or two.
        assert fetched <= spent / COOLDOWN + 3, (fetched, spent)
        assert readyz(gw).status_code == 503

        # The provider returns: the gateway recovers without a restart.
        idp.mode = "ok"
        time.sleep(COOLDOWN)
        assert ask(client, user_token(idp, sub="back")) == (200, None)
        assert wait_until(lambda: readyz(gw).status_code == 200, timeout=10) is not None
        assert readyz(gw).json()["issuers"][0]["keys"] == 2


def test_idp_down_later_stale_keys_serve_until_max_stale_then_fail_closed_and_recover(
    backend: Backend, idp: LoopbackIdP
) -> None:
    # A 1 s TTL: the background refresh runs every ~0.5 s and notices the outage at once.
    config = gateway_config(backend.url, idp, {"auth": {"jwks": {**FAST_JWKS, "default_ttl_seconds": 1.0}}})
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as client:
        assert ask(client, user_token(idp)) == (200, None)
        down_at = time.monotonic()
        idp.mode = "down"

        # Fresh tokens (new subjects, so no verified-token cache) every 0.1 s until refused.
        results: list[tuple[float, int, str | None]] = []
        for i in range(80):
            status, code = ask(client, user_token(idp, sub=f"stale-{i}"))
            results.append((time.monotonic(), status, code))
            if status != 200:
                break
            time.sleep(0.1)
        refused_at, status, code = results[-1]
        last_ok_fetch = max(t for t in idp.jwks_fetch_times if t < down_at)
        assert (status, code) == (401, "unknown_key"), results
        failed_fetches = fetches_since(idp, down_at)
        assert failed_fetches, "the outage was never noticed"
        # Stale keys kept verifying after the first failed refresh...
        assert any(t > failed_fetches[0] and s == 200 for t, s, _ in results), (failed_fetches, results)
        # ...until max_stale after the last success, not much earlier and not much later.
        assert MAX_STALE - 0.7 <= refused_at - last_ok_fetch <= MAX_STALE + 1.0, refused_at - last_ok_fetch
        # The outage is retried with backoff, never once per request.
        assert len(failed_fetches) < len(results) / 2

        not_ready = readyz(gw)
        assert not_ready.status_code == 503 and idp.issuer in not_ready.json()["reason"]
        assert not_ready.json()["issuers"][0]["stale"] is True
        wait_for_log(gw, jwks_warning(idp, "JWKS answered HTTP 500"))

        idp.mode = "ok"
        assert wait_until(lambda: readyz(gw).status_code == 200, timeout=12) is not None
        assert ask(client, user_token(idp, sub="recovered")) == (200, None)


def test_idp_hang_is_bounded_and_requests_do_not_pile_up_behind_it(backend: Backend, idp: LoopbackIdP) -> None:
    config = gateway_config(backend.url, idp, {"auth": {"jwks": FAST_JWKS}})
    ghost = unpublished_kid(idp)
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as client:
        assert ask(client, user_token(idp)) == (200, None)
        time.sleep(COOLDOWN)
        idp.mode = "hang"
        hang_started = time.monotonic()
        hang_seconds = 3.0

        # Unknown-kid requests keep a refresh hanging for the whole 3 s...
        unknown: list[tuple[float, tuple[int, str | None]]] = []

        def unknown_kid_traffic() -> None:
            with httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as other:
                i = 0
                while time.monotonic() - hang_started < hang_seconds:
                    token = idp.sign(user_claims(idp, sub=f"ghost-{i}"), kid=ghost)
                    sent = time.monotonic()
                    result = ask(other, token)
                    unknown.append((time.monotonic() - sent, result))
                    i += 1
                    time.sleep(0.05)

        thread = threading.Thread(target=unknown_kid_traffic, daemon=True)
        thread.start()
        # ...while requests with a cached kid answer at once.
        known: list[float] = []
        i = 0
        while time.monotonic() - hang_started < hang_seconds:
            token = user_token(idp, sub=f"known-{i}")
            sent = time.monotonic()
            assert ask(client, token) == (200, None)
            known.append(time.monotonic() - sent)
            i += 1
            time.sleep(0.05)
        thread.join(timeout=10)
        assert not thread.is_alive()

        hanging_fetches = fetches_since(idp, hang_started)
        assert len(hanging_fetches) >= 3, hanging_fetches  # a refresh was hanging throughout
        assert len(known) >= 10 and max(known) < 1.0, known
        assert unknown and all(result == (401, "unknown_key") for _, result in unknown), unknown
        # Each waited for at most one bounded fetch.
        assert max(duration for duration, _ in unknown) < FETCH_TIMEOUT + 0.7, unknown
        wait_for_log(gw, jwks_warning(idp, f"timed out after {FETCH_TIMEOUT:g} s"))

        # 50 concurrent unknown-kid requests during a hang share one fetch.
        time.sleep(FETCH_TIMEOUT + COOLDOWN)  # no fetch in flight, cooldown over
        before = idp.jwks_fetches
        tokens = [idp.sign(user_claims(idp, sub=f"burst-{n}"), kid=ghost) for n in range(50)]
        durations, statuses = asyncio.run(_burst(gw.url, tokens))
        assert statuses == [401] * 50
        assert idp.jwks_fetches - before <= 2, idp.jwks_fetch_times[before:]
        assert max(durations) < FETCH_TIMEOUT + 1.5, sorted(durations)[-5:]

        # The provider answers again: a key published now is found by the next refetch.
        idp.mode = "ok"
        time.sleep(COOLDOWN)
        new_kid = idp.add_key("EC")
        assert ask(client, idp.sign(user_claims(idp, sub="after-hang"), kid=new_kid)) == (200, None)


async def _burst(url: str, tokens: list[str]) -> tuple[list[float], list[int]]:
    limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens))
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=10, limits=limits) as client:

        async def one(token: str) -> tuple[float, int]:
            sent = time.monotonic()
            response = await client.post("/chatkit", json=LIST, headers=bearer(token))
            return time.monotonic() - sent, response.status_code

        results = await asyncio.gather(*(one(token) for token in tokens))
    return [d for d, _ in results], [s for _, s in results]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "JWKS is not valid JSON"),
        ("huge", "JWKS is larger than 1048576 bytes"),
        ("empty", "JWKS has no usable key"),
    ],
)
def test_bad_jwks_answers_keep_the_previous_keys(backend: Backend, idp: LoopbackIdP, mode: str, reason: str) -> None:
    config = gateway_config(backend.url, idp, {"auth": {"jwks": FAST_JWKS}})
    ghost = unpublished_kid(idp)
    with start_gateway(config) as gw, httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as client:
        assert ask(client, user_token(idp)) == (200, None)
        time.sleep(COOLDOWN)
        idp.mode = mode  # type: ignore[assignment]
        before = idp.jwks_fetches
        started = time.monotonic()
        # An unknown kid forces a refetch, which gets the bad answer.
        assert ask(client, idp.sign(user_claims(idp, sub="ghost"), kid=ghost)) == (401, "unknown_key")
        assert time.monotonic() - started < FETCH_TIMEOUT + 1.0
        assert idp.jwks_fetches == before + 1
        entry = wait_for_log(gw, jwks_warning(idp, reason))
        assert "2 keys kept" in entry["message"]
        # The keys from before still verify, and the gateway stays ready.
        for kind in ("RSA", "EC"):
            token = idp.sign(user_claims(idp, sub=f"after-{mode}-{kind}"), kid=idp.kid_of(kind))
            assert ask(client, token) == (200, None)
        ready = readyz(gw)
        assert ready.status_code == 200 and ready.json()["issuers"][0]["keys"] == 2


def test_key_rotation_under_steady_traffic_refuses_nothing_beyond_the_first_cooldown(
    backend: Backend, idp: LoopbackIdP
) -> None:
    """A client sends ~50 req/s for 4 s, each token signed with the provider's current key. The
    provider rotates at 1 s (a lone rotation), and at 2.5 s and 2.6 s (a second rotation while
    the first one's refetch still cools down). A refusal is allowed only within a cooldown of a
    rotation: for a token signed just before it, or a new kid waiting out the cooldown."""
    config = gateway_config(backend.url, idp, {"auth": {"jwks": FAST_JWKS}})
    with start_gateway(config) as gw:
        results: list[tuple[float, str, int, str | None]] = []
        started = time.monotonic()
        duration = 4.0

        def traffic() -> None:
            with httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as client:
                i = 0
                while time.monotonic() - started < duration:
                    signed_at = time.monotonic()
                    kid = idp.current_kid
                    token = idp.sign(user_claims(idp, sub=f"steady-{i}"), kid=kid)
                    status, code = ask(client, token)
                    results.append((signed_at, kid, status, code))
                    i += 1
                    time.sleep(max(0.0, signed_at + 0.02 - time.monotonic()))

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        rotations = []
        for offset in (1.0, 2.5, 2.6):
            time.sleep(max(0.0, started + offset - time.monotonic()))
            rotations.append(time.monotonic())
            idp.rotate()
        thread.join(timeout=duration + 10)
        assert not thread.is_alive()

    assert len(results) >= 80, len(results)  # steady traffic, even on a loaded machine
    assert {status for _, _, status, _ in results} <= {200, 401}
    refused = [(t, kid, code) for t, kid, status, code in results if status == 401]
    assert {code for _, _, code in refused} <= {"unknown_key"}
    outside = [
        (round(t - started, 3), kid)
        for t, kid, _ in refused
        if not any(r - 0.1 <= t <= r + COOLDOWN + 0.2 for r in rotations)
    ]
    assert outside == [], (outside, [round(r - started, 3) for r in rotations])
    # The lone rotation: its new kid triggered one refetch, so (nearly) nothing was refused.
    after_first = [t for t, _, _ in refused if rotations[0] - 0.1 <= t < rotations[1] - 0.1]
    assert len(after_first) <= 2, after_first
    # Every rotation's key was accepted once its cooldown was over.
    for rotation in rotations[1:]:
        assert any(t > rotation + COOLDOWN + 0.2 and status == 200 for t, _, status, _ in results)
    assert results[-1][2] == 200


# -- upstream faults ------------------------------------------------------------------------------

Op = tuple[str, dict[str, Any]]
JSON_OP: Op = ("threads.list", {})
STREAM_OP: Op = ("threads.create", {"input": user_input("hi")})
OPS: dict[str, Op] = {"json": JSON_OP, "stream": STREAM_OP}
CONNECT_TIMEOUT = 0.5
RESPONSE_TIMEOUT = 1.0
STREAM_IDLE_TIMEOUT = 1.0
BROKE_EVENT = {
    "type": "error",
    "code": "custom",
    "message": "The connection to the assistant was interrupted. Please try again.",
    "allow_retry": True,
}


@dataclass
class FaultBench:
    server: FaultyUpstream
    gw: RunningGateway
    token: str
    fds_before: int = 0

    @property
    def pid(self) -> int:
        return self.gw.process.pid

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.gw.url, headers=bearer(self.token), trust_env=False, timeout=15)

    def settle(self) -> None:
        """No connection between the gateway and the fault server, records cleared, fds counted."""
        self.server.behaviour = "ok"
        self.server.listen()
        self.server.drop_all()
        assert wait_until(lambda: established_to(self.server.port) == 0, 5) is not None
        self.fds_before = _settled_fd_count(self.pid)
        self.server.reset_records()

    def assert_no_leak(self, allowed: int = 0) -> None:
        """Back to what it was: no ESTABLISHED connection to the fault server, no extra fd."""
        port = self.server.port
        assert wait_until(lambda: established_to(port) <= allowed, 5) is not None, (
            f"{established_to(port)} connections to the upstream still open"
        )
        limit = self.fds_before + allowed
        assert wait_until(lambda: fd_count([self.pid]) <= limit, 5) is not None, (fd_count([self.pid]), limit)

    def assert_closed_by_gateway(self, within: float = 2.0) -> None:
        """Every connection the fault server saw was closed by the gateway, `within` s of asking."""
        records = list(self.server.records)
        assert records, "the fault server saw no connection"
        assert wait_until(lambda: all(r.peer_closed_at is not None for r in records), within) is not None, records


def _settled_fd_count(pid: int) -> int:
    previous = fd_count([pid])
    for _ in range(40):
        time.sleep(0.05)
        current = fd_count([pid])
        if current == previous:
            return current
        previous = current
    return previous


@pytest.fixture(scope="module")
def fault_env(session_idp: LoopbackIdP) -> Iterator[FaultBench]:
    overrides = {
        "upstream": {
            "connect_timeout": CONNECT_TIMEOUT,
            "response_timeout": RESPONSE_TIMEOUT,
            "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
        }
    }
    with running_faulty_upstream() as server, start_gateway(gateway_config(server.url, session_idp, overrides)) as gw:
        yield FaultBench(server, gw, user_token(session_idp, sub="fault-tester"))


@pytest.fixture
def faults(fault_env: FaultBench) -> FaultBench:
    fault_env.settle()
    return fault_env


def last_event(content: bytes) -> dict[str, Any]:
    frame = content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    event: dict[str, Any] = json.loads(frame.removeprefix(b"data: "))
    return event


@pytest.mark.parametrize("kind", list(OPS))
def test_upstream_refusing_connections_gets_502(faults: FaultBench, kind: str) -> None:
    faults.server.refuse()
    with faults.client() as client:
        started = time.monotonic()
        response = post(client, *OPS[kind])
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert time.monotonic() - started < CONNECT_TIMEOUT + 1.0
    faults.assert_no_leak()


@pytest.mark.parametrize("kind", list(OPS))
def test_upstream_accepting_and_never_answering_gets_504_in_time(faults: FaultBench, kind: str) -> None:
    faults.server.behaviour = "hang"
    with faults.client() as client:
        started = time.monotonic()
        response = post(client, *OPS[kind])
        elapsed = time.monotonic() - started
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    assert elapsed < CONNECT_TIMEOUT + RESPONSE_TIMEOUT + 1.0, elapsed
    faults.assert_closed_by_gateway()
    faults.assert_no_leak()


def test_sse_headers_then_silence_ends_with_an_error_event_after_the_idle_timeout(faults: FaultBench) -> None:
    faults.server.behaviour = "sse_then_hang"
    with faults.client() as client:
        started = time.monotonic()
        response = post(client, *STREAM_OP)
        elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert STREAM_IDLE_TIMEOUT - 0.2 <= elapsed < STREAM_IDLE_TIMEOUT + 2.0, elapsed
    assert response.content.startswith(FIRST_EVENT)
    assert response.content.endswith(b"\n\n")
    assert last_event(response.content) == BROKE_EVENT
    assert len(sse_events(response.content)) == 2
    faults.assert_closed_by_gateway()
    faults.assert_no_leak()


def test_json_headers_with_content_length_then_silence_get_504_in_time(faults: FaultBench) -> None:
    """A small JSON answer is read whole before it is relayed: a body that stops coming is a 504."""
    faults.server.behaviour = "json_then_hang"
    with faults.client() as client:
        started = time.monotonic()
        response = post(client, *JSON_OP)
        elapsed = time.monotonic() - started
    assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
    assert elapsed < CONNECT_TIMEOUT + RESPONSE_TIMEOUT + 1.0, elapsed
    faults.assert_closed_by_gateway()
    faults.assert_no_leak()


def test_large_json_body_that_stops_coming_gives_the_client_a_broken_response_in_time(faults: FaultBench) -> None:
    """Over 1 MiB the answer is relayed as it arrives: the status is out, so the client gets an
    incomplete body (never a short one that looks whole), within the response timeout. (Not a
    `threads.list`: the gateway reads those whole, to keep only the user's threads.)"""
    faults.server.behaviour = "big_json_then_hang"
    received = 0
    with faults.client() as client:
        started = time.monotonic()
        body = {"type": "items.list", "params": {"thread_id": "thr_faults"}}
        with client.stream("POST", "/chatkit", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(2 * 1024 * 1024)
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in response.iter_raw():
                    received += len(chunk)
        elapsed = time.monotonic() - started
    assert 0 < received < 2 * 1024 * 1024
    assert elapsed < CONNECT_TIMEOUT + RESPONSE_TIMEOUT + 1.0, elapsed
    faults.assert_closed_by_gateway()
    faults.assert_no_leak()


def test_json_body_cut_short_gets_502(faults: FaultBench) -> None:
    faults.server.behaviour = "json_die"
    with faults.client() as client:
        response = post(client, *JSON_OP)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_bad_response"
    faults.assert_no_leak()


def test_upstream_dying_mid_frame_ends_the_stream_with_an_error_event(faults: FaultBench) -> None:
    faults.server.behaviour = "die_mid_frame"
    with faults.client() as client:
        response = post(client, *STREAM_OP)
    assert response.status_code == 200
    # The half-written frame is closed by a blank line, then the error event ends the stream.
    assert response.content.startswith(FIRST_EVENT + HALF_FRAME + b"\n\n")
    assert response.content.endswith(b"\n\n")
    assert last_event(response.content) == BROKE_EVENT
    faults.assert_no_leak()


def test_client_leaving_a_never_ending_stream_closes_the_upstream_connection_at_once(faults: FaultBench) -> None:
    faults.server.behaviour = "forever"
    with faults.client() as client:
        with client.stream("POST", "/chatkit", json={"type": STREAM_OP[0], "params": STREAM_OP[1]}) as response:
            assert response.status_code == 200
            received = b""
            for chunk in response.iter_raw():
                received += chunk
                if received.count(b"\n\n") >= 3:
                    break
        left_at = time.monotonic()  # the response (and its connection) closed on leaving the block
    assert received.startswith(b'data: {"type":"progress_update","text":"tick 0"}\n\n')
    (record,) = faults.server.records
    assert wait_until(lambda: record.peer_closed_at is not None, 2.0) is not None, record
    assert record.peer_closed_at is not None and record.peer_closed_at - left_at < 2.0
    sent = record.events_sent
    time.sleep(0.3)
    assert record.events_sent == sent  # nothing more is produced for nobody
    faults.assert_no_leak()


def test_a_500_kib_single_line_event_arrives_intact(faults: FaultBench) -> None:
    faults.server.behaviour = "big_line"
    with faults.client() as client:
        response = post(client, *STREAM_OP)
    assert response.status_code == 200
    assert response.content == big_line_event()
    (event,) = sse_events(response.content)
    assert len(event["update"]["delta"]) == 500 * 1024
    faults.assert_no_leak()


@pytest.mark.parametrize("kind", list(OPS))
def test_upstream_speaking_something_other_than_http_gets_502(faults: FaultBench, kind: str) -> None:
    faults.server.behaviour = "garbage"
    with faults.client() as client:
        started = time.monotonic()
        response = post(client, *OPS[kind])
    assert response.status_code == 502
    assert response.json()["error"]["code"] in ("upstream_bad_response", "upstream_unavailable")
    assert time.monotonic() - started < 2.0
    faults.assert_closed_by_gateway()
    faults.assert_no_leak()


def test_keep_alive_connection_closed_by_the_upstream_is_not_reused(faults: FaultBench) -> None:
    """Closed while idle: the gateway notices and connects afresh. Closed as the next request
    arrives (the keep-alive race): the request, never seen by the upstream, is retried once."""
    with faults.client() as client:
        faults.server.behaviour = "close_when_idle"
        assert post(client, *JSON_OP).status_code == 200
        time.sleep(0.6)  # the upstream closed the idle connection meanwhile
        assert post(client, *JSON_OP).status_code == 200
        assert [r.requests for r in faults.server.records] == [1, 1]

        faults.settle()
        faults.server.behaviour = "close_on_reuse"
        first = post(client, *JSON_OP)
        second = post(client, *JSON_OP)
        assert (first.status_code, second.status_code) == (200, 200), second.text
        assert second.json() == {"data": [], "has_more": False, "after": None}
        reused, fresh = faults.server.records
        assert (reused.requests, reused.unanswered) == (2, 1)
        assert (fresh.requests, fresh.unanswered) == (1, 0)
    faults.assert_no_leak(allowed=1)  # the fresh connection may stay pooled


@pytest.mark.parametrize(
    "op", [("threads.update", {"thread_id": "thr_1", "title": "renamed"}), STREAM_OP], ids=["update", "stream"]
)
def test_keep_alive_race_never_sends_a_request_that_changes_something_twice(faults: FaultBench, op: Op) -> None:
    """The upstream read the request on the reused connection and closed it unanswered: it may have
    acted on it, so an op that changes something gets a 502 rather than a second delivery."""
    faults.server.behaviour = "close_on_reuse"
    with faults.client() as client:
        assert post(client, *op).status_code == 200  # the connection, now kept alive
        started = time.monotonic()
        response = post(client, *op)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert time.monotonic() - started < 2.0
    assert [(r.requests, r.unanswered) for r in faults.server.records] == [(2, 1)]
    faults.assert_no_leak()
