"""The framing cases real servers produce only sometimes, produced every time by a raw-socket upstream,
through the gateway's transport and through httpcore: the same answer, or both refuse it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import uvloop

from gateway.config import UpstreamConfig
from gateway.errors import UpstreamBadResponse
from gateway.upstream import Upstream
from tests.support.differential import Seen, compare
from tests.support.interop import EVENTS
from tests.support.raw_upstream import CLOSE_JSON, RawUpstream, running_raw_upstream


@pytest.fixture(scope="module")
def raw() -> Iterator[RawUpstream]:
    with running_raw_upstream() as server:
        yield server


def fetch(raw: RawUpstream, mode: str, body: bytes | int | None = b"{}") -> tuple[Seen, Seen]:
    return compare("PUT" if isinstance(body, int) else "POST", f"{raw.url}/{mode}", body)


def test_a_body_without_length_or_chunking_ends_normally_at_the_close(raw: RawUpstream) -> None:
    ours, httpcore = fetch(raw, "close-json")
    assert ours == httpcore and ours.body == CLOSE_JSON


def test_an_event_stream_without_length_or_chunking_ends_normally_at_the_close(raw: RawUpstream) -> None:
    ours, httpcore = fetch(raw, "close-sse")
    assert ours == httpcore and ours.body == b"".join(EVENTS)


def test_a_trailer_in_the_same_read_as_the_head_never_becomes_a_header(raw: RawUpstream) -> None:
    ours, httpcore = fetch(raw, "trailer-one-write")
    assert ours == httpcore and ours.body == b"{}"
    assert ours.header("x-sum") is None and ours.header("x-late") is None
    assert ours.header("trailer") == "x-sum"  # the announcement is a header; the field is not


@pytest.mark.parametrize("mode", ["huge-head", "gzip-chunked", "chunked-twice"])
def test_an_answer_httpcore_refuses_is_refused(raw: RawUpstream, mode: str) -> None:
    ours, httpcore = fetch(raw, mode)
    assert httpcore.error is not None, httpcore
    assert ours.error is not None, ours


@pytest.mark.parametrize("mode", ["head-60k", "interim-then-final"])
def test_a_head_under_the_bound_passes_and_interim_heads_count_apart(raw: RawUpstream, mode: str) -> None:
    ours, httpcore = fetch(raw, mode)
    assert ours == httpcore and ours.status == 200 and ours.body == b"{}"


def test_an_early_answer_before_a_reset_is_relayed_where_httpcore_loses_it(raw: RawUpstream) -> None:
    ours, httpcore = fetch(raw, "early-413-reset", 16 * 1024 * 1024)
    assert ours.status == 413 and ours.body == b'{"error":"too large"}', ours
    assert httpcore.error is not None, httpcore


def test_upstream_max_header_bytes_bounds_the_final_head(raw: RawUpstream) -> None:
    """The same 57 KiB head: relayed under the default bound, a 502 `upstream_bad_response` under 32 KiB."""

    async def list_threads(max_header_bytes: int) -> int:
        config = UpstreamConfig(url=f"{raw.url}/head-60k", max_header_bytes=max_header_bytes)
        upstream = Upstream(config)
        try:
            return (await upstream.send_json(upstream.url, [], b"{}")).status
        finally:
            await upstream.aclose()

    assert uvloop.run(list_threads(65536)) == 200
    with pytest.raises(UpstreamBadResponse):
        uvloop.run(list_threads(32768))
