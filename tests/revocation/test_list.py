"""The revocation list's own logic, in process: what an entry refuses, lapsing, the streams an
entry ends, and the configuration keys."""

from __future__ import annotations

import math
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from gateway.auth.verify import Principal
from gateway.config import ConfigError, load_config, redacted
from gateway.revocation.entries import Entry, RevocationList, StreamRegistry, StreamStopper, keys_of
from tests.support.clock import FakeClock

ISS = "https://idp.example.com"


def principal(sub: str = "alice", **claims: Any) -> Principal:
    return Principal(sub, ISS, MappingProxyType({"sub": sub, "iss": ISS, **claims}), math.inf, "t")


def test_keys_name_the_user_the_session_and_the_token() -> None:
    assert list(keys_of(principal(sid="s1", jti="j1"))) == [("sub", ISS, "alice"), ("sid", ISS, "s1"), ("jti", "j1")]
    assert list(keys_of(principal(sid=5, jti=None))) == [("sub", ISS, "alice")]


@pytest.mark.parametrize(
    ("entry", "iat", "refused"),
    [
        pytest.param(Entry(2e6), 1.0, True, id="any-token"),
        pytest.param(Entry(2e6), None, True, id="any-token-without-iat"),
        pytest.param(Entry(999_999.0), 1.0, False, id="lapsed"),
        pytest.param(Entry(2e6, 500.0), 499, True, id="issued-before-cutoff"),
        pytest.param(Entry(2e6, 500.0), 500, True, id="issued-at-cutoff"),
        pytest.param(Entry(2e6, 500.0), 501, False, id="issued-after-cutoff"),
        pytest.param(Entry(2e6, 500.0), "501", True, id="iat-not-a-number"),
        pytest.param(Entry(2e6, 500.0), None, True, id="no-iat"),
    ],
)
def test_what_an_entry_refuses(entry: Entry, iat: object, refused: bool) -> None:
    assert entry.refuses(iat, 1_000_000.0) is refused


def test_an_entry_ends_only_the_streams_it_refuses_and_removed_streams_are_forgotten() -> None:
    clock, streams = FakeClock(), StreamRegistry()
    entries = RevocationList(clock, streams)
    ended: list[str] = []
    old = StreamStopper(100, lambda: ended.append("old"))
    new = StreamStopper(900, lambda: ended.append("new"))
    gone = StreamStopper(100, lambda: ended.append("gone"))
    key = ("sub", ISS, "alice")
    for stopper in (old, new, gone):
        streams.add([key], stopper)
    streams.remove([key], gone)
    entries.put(key, Entry(clock.now + 60, 500.0))
    assert ended == ["old"]
    streams.remove([key], old)
    streams.remove([key], new)
    assert len(streams) == 0


def test_entries_lapse_and_the_table_is_pruned() -> None:
    clock = FakeClock()
    entries = RevocationList(clock, StreamRegistry())
    for n in range(3000):
        entries.put(("jti", str(n)), Entry(clock.now + 10))
    assert entries.refuses(principal(jti="5"))
    clock.advance(11)
    assert not entries.refuses(principal(jti="5"))
    for n in range(1200):  # growing past the next threshold (4096) prunes the lapsed 3000
        entries.put(("jti", f"fresh-{n}"), Entry(clock.now + 10))
    assert len(entries) <= 1200


def test_the_revocation_keys_load_with_redis_url_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "redis-url"
    secret.write_text("redis://:pw@127.0.0.1:6379/2\n")
    environ = {
        "CHATKIT_GATEWAY__UPSTREAM__URL": "http://127.0.0.1:9/chatkit",
        "CHATKIT_GATEWAY__AUTH__ISSUERS": '[{issuer = "https://idp.example.com", audiences = ["c"]}]',
        "CHATKIT_GATEWAY__REVOCATION__ENABLED": "true",
        "CHATKIT_GATEWAY__REVOCATION__STORE": "redis",
        "CHATKIT_GATEWAY__REVOCATION__REDIS_URL_FILE": str(secret),
    }
    config = load_config(environ=environ)
    assert config.revocation.redis_url == "redis://:pw@127.0.0.1:6379/2"
    assert redacted(config)["revocation"]["redis_url"] == "<redacted>"
    assert config.auth.stream_grace_seconds == 300


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("REVOCATION__STORE", '"redis"', "revocation: redis_url is required"),
        ("AUTH__STREAM_GRACE_SECONDS", "-2", "auth.stream_grace_seconds"),
        ("AUTH__STREAM_GRACE_SECONDS", "-0.5", "auth.stream_grace_seconds"),
    ],
)
def test_bad_revocation_settings_stop_start_up(key: str, value: str, message: str) -> None:
    environ = {
        "CHATKIT_GATEWAY__UPSTREAM__URL": "http://127.0.0.1:9/chatkit",
        "CHATKIT_GATEWAY__AUTH__ISSUERS": '[{issuer = "https://idp.example.com", audiences = ["c"]}]',
        f"CHATKIT_GATEWAY__{key}": value,
    }
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ)
