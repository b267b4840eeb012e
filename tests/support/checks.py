"""Checks every HTTP-level test makes the same way: the gateway's JSON error, a condition awaited."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import pytest

__all__ = ["assert_error", "metric", "wait_for"]


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


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in the Prometheus text format of `/metrics` (0 when absent)."""
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}(\{{{re.escape(selector)}\}})? (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.groups()[-1])
    return 0.0
