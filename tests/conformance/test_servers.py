"""The gateway's transport against every server a ChatKit backend runs on, differentially: the same
request through it and through httpx's default transport (httpcore) must give the same status,
headers and bytes, except where httpcore is known to lose the answer (an early refusal)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import pytest

from tests.support.differential import compare
from tests.support.interop import EVENTS
from tests.support.interop_servers import SERVERS, running_server

UPLOAD_BYTES = 16 * 1024 * 1024


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    with running_server(request.param) as url:
        yield url


def test_a_json_answer_is_the_same_through_both_transports(server: str) -> None:
    ours, httpcore = compare("POST", f"{server}/json", b'{"type":"threads.list"}')
    assert ours == httpcore
    assert ours.status == 200 and json.loads(ours.body) == {"received": 23}


def test_an_event_stream_is_the_same_through_both_transports(server: str) -> None:
    ours, httpcore = compare("POST", f"{server}/sse", b"{}")
    assert ours == httpcore
    assert ours.status == 200 and ours.body == b"".join(EVENTS)


def test_a_gzipped_stream_keeps_its_bytes_and_its_label(server: str) -> None:
    ours, httpcore = compare("POST", f"{server}/sse-gzip", b"{}")
    assert ours == httpcore
    assert ours.header("content-encoding") == "gzip"
    assert gzip.decompress(ours.body) == b"".join(EVENTS)


def test_an_upload_refused_before_it_was_read_gets_the_servers_answer(server: str) -> None:
    ours, httpcore = compare("PUT", f"{server}/upload-refused", UPLOAD_BYTES)
    assert ours.status == 413, ours
    # httpcore relays it too when the server reads (or discards) the whole body first; when the
    # server resets the connection instead, it reports the reset and the answer is lost.
    assert httpcore.status in (413, 0), httpcore
