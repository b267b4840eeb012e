"""Checks every HTTP-level test makes the same way: the gateway's JSON error, a condition awaited."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

__all__ = ["assert_error", "wait_for"]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The gateway's own error: `status`, `{"error": {"code", "message"}}` as JSON, never cached."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> None:
    """Poll `predicate` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail("condition not reached in time")
