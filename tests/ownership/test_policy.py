"""The policy's pure parts, in-process: which ids a request names, and how a list is filtered."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.chatkit import parse_chatkit_request
from gateway.config import OwnershipConfig
from gateway.errors import InvalidChatKitRequest, NotOwned
from gateway.ownership import Owners, OwnershipPolicy, named_ids
from gateway.ownership.store import MemoryStore


async def policy(unknown: str = "claim") -> OwnershipPolicy:
    made = OwnershipPolicy(OwnershipConfig.model_validate({"unknown": unknown}), Owners(MemoryStore(), cache_size=100))
    await made.owners.claim("thr_a", "alice")
    await made.owners.claim("atc_a", "alice")
    await made.owners.claim("thr_b", "bob")
    return made


@pytest.mark.parametrize(
    ("params", "ids"),
    [
        pytest.param({"thread_id": "t", "attachment_id": "a"}, ["t", "a"], id="both"),
        pytest.param({"input": {"attachments": ["a1", None, "a2"]}}, ["a1", "a2"], id="input-attachments"),
        pytest.param({"thread_id": None, "input": {"attachments": "a1"}}, [], id="null-and-not-a-list"),
        pytest.param({"input": None, "item_id": "msg_1"}, [], id="other-ids-are-not-ownership"),
        pytest.param([], [], id="params-not-an-object"),
    ],
)
def test_the_ids_a_request_names(params: Any, ids: list[str]) -> None:
    assert named_ids(params) == ids


@pytest.mark.anyio
@pytest.mark.parametrize("unknown", ["claim", "deny"])
async def test_each_named_id_must_be_the_users(unknown: str) -> None:
    checker = await policy(unknown)

    def request(params: dict[str, Any], op: str = "threads.get_by_id") -> Any:
        return parse_chatkit_request(json.dumps({"type": op, "params": params}).encode())

    await checker.check("alice", request({"thread_id": "thr_a", "input": {"attachments": ["atc_a"]}}))
    for params in ({"thread_id": "thr_b"}, {"thread_id": "thr_a", "input": {"attachments": ["thr_b"]}}):
        with pytest.raises(NotOwned):
            await checker.check("alice", request(params, "threads.anything"))
    if unknown == "deny":
        with pytest.raises(NotOwned):
            await checker.check("alice", request({"thread_id": "thr_new"}))
    else:
        await checker.check("alice", request({"thread_id": "thr_new"}))
        with pytest.raises(NotOwned):
            await checker.check("bob", request({"thread_id": "thr_new"}))
    with pytest.raises(InvalidChatKitRequest):
        await checker.check("alice", request({"attachment_id": 1}))


LIST = {
    "data": [
        {"id": "thr_a", "title": "ä"},
        {"id": "thr_b"},
        {"id": "thr_nobody"},
        {"title": "no id"},
        {"id": ["thr_a"]},
        "thr_a",
    ],
    "has_more": True,
    "after": "thr_b",
    "extra": {"kept": 1.5},
}


@pytest.mark.anyio
async def test_a_list_keeps_only_the_users_threads_and_everything_else() -> None:
    filtered = json.loads(await (await policy()).filter_list("alice", json.dumps(LIST).encode()))
    assert filtered == {**LIST, "data": [{"id": "thr_a", "title": "ä"}]}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"error": "not_found"}', id="no-data"),
        pytest.param(b'{"data": {"id": "thr_b"}}', id="data-not-a-list"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(b'{"data":[{"id":"thr_a"}],  "has_more":false}', id="nothing-to-drop"),
    ],
)
async def test_a_list_answer_it_cannot_read_or_need_not_change_passes_as_it_came(body: bytes) -> None:
    assert await (await policy()).filter_list("alice", body) == body


@pytest.mark.anyio
async def test_a_filtered_list_keeps_its_numbers_as_sent() -> None:
    """An integer beyond 64 bits (which `orjson` reads as a float) is written back whole."""
    body = b'{"data":[{"id":"thr_a","n":123456789012345678901234567890},{"id":"thr_b"}],"total":1e2}'
    filtered = await (await policy()).filter_list("alice", body)
    assert filtered == b'{"data":[{"id":"thr_a","n":123456789012345678901234567890}],"total":100.0}'


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(json.dumps(LIST).encode("utf-16"), id="utf-16"),
        pytest.param(b"\xef\xbb\xbf" + json.dumps(LIST).encode(), id="utf-8-bom"),
        pytest.param(json.dumps({**LIST, "extra": float("nan")}).encode(), id="nan"),
    ],
)
async def test_a_list_only_json_reads_is_filtered_all_the_same(body: bytes) -> None:
    """Answers `orjson` refuses are read as `json` reads them: never relayed unfiltered."""
    filtered = json.loads(await (await policy()).filter_list("alice", body))
    assert filtered["data"] == [{"id": "thr_a", "title": "ä"}]


@pytest.mark.anyio
async def test_a_filtered_list_with_a_lone_surrogate_escape_is_written_back_escaped() -> None:
    """`"\\ud800"` is valid JSON with no UTF-8 form: the page is filtered and stays valid JSON."""
    body = b'{"data":[{"id":"thr_a","title":"\\ud800 \xc3\xa4"},{"id":"thr_b"}]}'
    filtered = await (await policy()).filter_list("alice", body)
    assert filtered == b'{"data":[{"id":"thr_a","title":"\\ud800 \\u00e4"}]}'
    assert json.loads(filtered) == {"data": [{"id": "thr_a", "title": "\ud800 ä"}]}


class CountingStore(MemoryStore):
    """The memory store, counting the ids each lookup asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def owners(self, ids: Sequence[str]) -> dict[str, str]:
        self.asked.extend(ids)
        return await super().owners(ids)


@pytest.mark.anyio
async def test_a_list_asks_the_store_about_an_unowned_thread_once_while_checks_always_ask() -> None:
    store = CountingStore()
    owners = Owners(store, cache_size=100)
    listing = OwnershipPolicy(OwnershipConfig.model_validate({"unknown": "deny"}), owners)
    body = json.dumps({"data": [{"id": "thr_nobody"}], "has_more": False}).encode()
    for _ in range(3):
        assert json.loads(await listing.filter_list("alice", body))["data"] == []
    assert store.asked == ["thr_nobody"]  # the absence is remembered for listing
    for _ in range(2):
        assert await owners.owners_of(["thr_nobody"]) == {}
    assert store.asked == ["thr_nobody"] * 3  # a check never trusts a remembered absence
    # Once recorded (here, on this replica), the owner sees the thread in the list at once.
    assert await owners.claim("thr_nobody", "alice") == "alice"
    assert json.loads(await listing.filter_list("alice", body))["data"] == [{"id": "thr_nobody"}]
