"""`chatkit-gateway demo` as a newcomer runs it: a subprocess on loopback, driven by real Chromium.

The demo page signs in through the development identity provider, chats through the gateway with
replies that stream in, and shows what the backend received; signed out, the gateway's 401 makes
the page ask the user to sign in. The provider's tokens go through the gateway's ordinary
verifier, and Ctrl-C stops the one demo process completely. The signed-in screenshot taken here
is `docs/demo.png`; `UPDATE_DEMO_SCREENSHOT=1 make test` writes it there (otherwise it stays in the
test's temporary folder, and a test run leaves the tree as it found it).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.support.keys import b64url
from tests.support.procs import PROJECT_ROOT, LoggedProcess, free_port, process_log, start_process, stop_process

SCREENSHOT = PROJECT_ROOT / "docs" / "demo.png"
MESSAGE = "hello gateway"
THREADS_LIST = {"type": "threads.list", "params": {"limit": 10, "order": "desc"}}


@dataclass(frozen=True)
class RunningDemo:
    url: str
    process: LoggedProcess

    def log(self) -> str:
        return process_log(self.process)


def start_demo() -> RunningDemo:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "gateway", "demo", "--port", str(port)]
    return RunningDemo(url=url, process=start_process(args, ready_url=f"{url}/readyz", timeout=30))


@pytest.fixture(scope="module")
def demo() -> Iterator[RunningDemo]:
    running = start_demo()
    try:
        yield running
    finally:
        stop_process(running.process)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 760})
    try:
        yield ctx
    finally:
        ctx.close()


def sign_in(page: Page, demo: RunningDemo, username: str = "ada", email: str = "ada@example.com") -> None:
    page.goto(demo.url)
    page.fill("#username", username)
    page.fill("#email", email)
    page.click("#signin")
    expect(page.locator("#signed-in")).to_be_visible()


# Every change to the newest reply is recorded in the page itself, so no step can fall between
# two samples: what is asserted is the order of what the user saw, not its timing.
RECORD_REPLY_GROWTH = """() => {
  window.replySeen = [];
  const messages = document.getElementById("messages");
  new MutationObserver(() => {
    const replies = messages.querySelectorAll(".message.assistant");
    const reply = replies[replies.length - 1];
    if (reply) window.replySeen.push({length: reply.textContent.length, done: reply.dataset.done === "true"});
  }).observe(messages, {childList: true, subtree: true, characterData: true, attributes: true});
}"""


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def test_signed_in_chat_streams_the_reply_and_shows_what_the_backend_received(
    demo: RunningDemo, context: BrowserContext, tmp_path: Path
) -> None:
    page = context.new_page()
    sign_in(page, demo)
    expect(page.locator("#signed-in")).to_contain_text("ada (ada@example.com)")
    cookie = next(c for c in context.cookies() if c["name"] == "auth_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read the session

    page.evaluate(RECORD_REPLY_GROWTH)
    send(page, MESSAGE)
    reply = page.locator(".message.assistant[data-done='true']")
    expect(reply).to_have_count(1, timeout=15_000)

    final = reply.inner_text()
    assert final.startswith("Hello ada! You are signed in as demo|ada (ada@example.com).")
    assert 'You are on page "chatkit-gateway demo" (/).' in final
    assert final.endswith(f'You said: "{MESSAGE}"')
    seen: list[dict[str, Any]] = page.evaluate("window.replySeen")
    partial = [entry["length"] for entry in seen if not entry["done"] and entry["length"] > 0]
    assert partial == sorted(partial), "the reply only ever grows"
    steps_before_complete = {length for length in partial if length < len(final)}
    assert len(steps_before_complete) >= 2, f"the reply did not appear in two steps before completing: {seen}"

    received = json.loads(page.locator("#received").inner_text())
    assert received["userId"] == "demo|ada"
    issuer = re.search(r"identity provider: (http://127\.0\.0\.1:\d+)/", demo.log())
    assert issuer is not None, demo.log()
    assert received["userInfo"] == {"id": "demo|ada", "name": "ada", "email": "ada@example.com", "issuer": issuer[1]}
    assert received["pageContext"]["url"] == f"{demo.url}/"
    assert received["pageContext"]["path"] == "/"
    assert received["pageContext"]["title"] == "chatkit-gateway demo"
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", received["requestId"])
    assert "accessToken" not in received

    # A second message goes to the same thread; the backend still knows who and where.
    send(page, "and again")
    expect(page.locator(".message.assistant[data-done='true']")).to_have_count(2, timeout=15_000)
    assert page.locator(".message.assistant").nth(1).inner_text().endswith('You said: "and again"')
    screenshot = SCREENSHOT if os.environ.get("UPDATE_DEMO_SCREENSHOT") == "1" else tmp_path / SCREENSHOT.name
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_another_users_thread_is_refused_on_the_page(demo: RunningDemo, browser: Browser) -> None:
    """The demo runs with ownership on: grace cannot open ada's thread; ada can."""
    with browser.new_context() as ada_context, browser.new_context() as grace_context:
        ada = ada_context.new_page()
        sign_in(ada, demo)
        send(ada, MESSAGE)
        expect(ada.locator(".message.assistant[data-done='true']")).to_have_count(1, timeout=15_000)
        thread_id = ada.locator("#thread-id").inner_text()
        assert thread_id.startswith("thr_")

        grace = grace_context.new_page()
        sign_in(grace, demo, "grace", "grace@example.com")
        grace.fill("#open-id", thread_id)
        grace.click("#open")
        expect(grace.locator("#opened")).to_contain_text("HTTP 404")
        expect(grace.locator("#opened")).to_contain_text("not_found")

        ada.fill("#open-id", thread_id)
        ada.click("#open")
        expect(ada.locator("#opened")).to_contain_text("HTTP 200")
        expect(ada.locator("#opened")).to_contain_text(thread_id)


def test_signed_out_send_gets_the_sign_in_prompt(demo: RunningDemo, context: BrowserContext) -> None:
    page = context.new_page()
    sign_in(page, demo, username="grace", email="")
    page.click("#signout")
    expect(page.locator("#signin-form")).to_be_visible()
    assert not [c for c in context.cookies() if c["name"] == "auth_token"]

    with page.expect_response(f"{demo.url}/chatkit") as answer:
        send(page, "anyone there?")
    assert answer.value.status == 401
    expect(page.locator("#signin-prompt")).to_be_visible()
    expect(page.locator("#signin-prompt")).to_contain_text("Please sign in")
    expect(page.locator(".message.user.refused")).to_have_count(1)
    expect(page.locator(".message.assistant")).to_have_count(0)


def signed_in_token(demo: RunningDemo, client: httpx.Client, username: str = "ada") -> str:
    response = client.post(
        f"{demo.url}/signin",
        data={"username": username, "email": f"{username}@example.com"},
        headers={"origin": demo.url},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    set_cookie = response.headers["set-cookie"]
    assert re.search(r"(?i); *HttpOnly(;|$)", set_cookie) and re.search(r"(?i); *SameSite=Lax(;|$)", set_cookie)
    assert re.search(r"(?i); *Path=/(;|$)", set_cookie)
    return response.cookies["auth_token"]


def chatkit(demo: RunningDemo, client: httpx.Client, token: str) -> httpx.Response:
    return client.post(
        f"{demo.url}/chatkit",
        json=THREADS_LIST,
        headers={"origin": demo.url, "cookie": f"auth_token={token}"},
    )


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def tampered(token: str) -> str:
    """The same token with its claims edited to another user: the signature no longer fits."""
    header, payload, signature = token.split(".")
    claims = json.loads(b64decode(payload))
    claims["sub"] = "demo|admin"
    return f"{header}.{b64url(json.dumps(claims, separators=(',', ':')).encode())}.{signature}"


def test_demo_tokens_pass_the_gateways_ordinary_verifier(demo: RunningDemo) -> None:
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=10) as client:
        token = signed_in_token(demo, client, username="lovelace")

        accepted = chatkit(demo, client, token)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json() == {"data": [], "has_more": False}  # a new user has no threads yet

        refused = chatkit(demo, client, tampered(token))
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_token"

        # The key that signed it is the one the provider publishes, as any issuer's would be.
        issuer = re.search(r"identity provider: (http://127\.0\.0\.1:\d+)/", demo.log())
        assert issuer is not None, demo.log()
        discovery = client.get(f"{issuer[1]}/.well-known/openid-configuration").json()
        assert discovery["issuer"] == issuer[1]
        kids = [key["kid"] for key in client.get(discovery["jwks_uri"]).json()["keys"]]
        header = json.loads(b64decode(token.split(".")[0]))
        assert header["alg"] == "RS256" and header["kid"] in kids


@pytest.mark.parametrize(
    ("form", "headers", "status"),
    [
        ({"username": "ada"}, {"origin": "http://evil.example"}, 403),
        ({"username": "ada"}, {}, 403),
        ({"username": "   "}, {"origin": "SELF"}, 400),
        ({"username": "ada", "email": "not an email"}, {"origin": "SELF"}, 400),
    ],
    ids=["cross-site-origin", "no-origin", "blank-username", "bad-email"],
)
def test_sign_in_sets_no_cookie_for_a_foreign_page_or_a_bad_form(
    demo: RunningDemo, form: dict[str, str], headers: dict[str, str], status: int
) -> None:
    headers = {name: demo.url if value == "SELF" else value for name, value in headers.items()}
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=10) as client:
        response = client.post(f"{demo.url}/signin", data=form, headers=headers)
    assert response.status_code == status
    assert "set-cookie" not in response.headers


def listening_ports(pid: int) -> set[int]:
    """The TCP ports on which process `pid` holds a listening socket (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return {port for port, inode in listeners() if inode in inodes}


def listeners() -> list[tuple[int, str]]:
    """(port, socket inode) of every listening TCP socket on the machine."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    found.append((int(fields[1].rsplit(":", 1)[1], 16), fields[9]))
    return found


def children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces and parentheses; the fields after its last ")" do not.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def test_sigint_stops_the_whole_demo_and_exits_0() -> None:
    running = start_demo()
    try:
        pid = running.process.pid
        ports = listening_ports(pid)
        assert len(ports) == 3, f"front, identity provider and backend: {ports}"
        assert children_of(pid) == []

        started = time.monotonic()
        os.kill(pid, signal.SIGINT)
        try:
            returncode = running.process.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo was still running 10 s after SIGINT:\n{running.log()}")
        assert returncode == 0, running.log()
        assert time.monotonic() - started < 10
        assert not ports & {port for port, _ in listeners()}
        assert children_of(pid) == []
    finally:
        stop_process(running.process)
