"""Two users and what the backend received, for the ownership tests through a real gateway."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.chatkit import create_thread, post
from tests.support.gateway import RunningGateway, bearer, user_token

if TYPE_CHECKING:
    from tests.support.fixtures import Backend
    from tests.support.idp import LoopbackIdP


@contextmanager
def signed_in(gateway: RunningGateway, idp: LoopbackIdP, sub: str) -> Iterator[httpx.Client]:
    """A client of `gateway` signed in as `sub` (a bearer token)."""
    headers = bearer(user_token(idp, sub))
    with httpx.Client(base_url=gateway.url, headers=headers, trust_env=False, timeout=30) as client:
        yield client


@pytest.fixture
def alice(gateway: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP) -> Iterator[httpx.Client]:
    with signed_in(gateway, session_idp, "alice") as client:
        yield client


@pytest.fixture
def bob(gateway: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP) -> Iterator[httpx.Client]:
    with signed_in(gateway, session_idp, "bob") as client:
        yield client


def backend_saw_nothing(backend: Backend, before: int) -> bool:
    return len(backend.requests()) == before


def refused_unseen(backend: Backend, client: httpx.Client, op: str, params: dict[str, Any]) -> httpx.Response:
    """Send `op` and return the answer, after checking that the backend received nothing."""
    before = len(backend.requests())
    response = post(client, op, params)
    assert backend_saw_nothing(backend, before), f"{op} reached the backend"
    return response


def thread_of(client: httpx.Client, text: str = "hello") -> str:
    return create_thread(client, text)[0]


def listed(client: httpx.Client) -> list[str]:
    response = post(client, "threads.list", {"limit": 50, "order": "asc"})
    assert response.status_code == 200, response.text
    return [thread["id"] for thread in response.json()["data"]]
