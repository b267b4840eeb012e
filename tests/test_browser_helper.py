"""The browser helper `/chatkit-gateway.js` in a real Chromium: an app page on one loopback origin
imports it from the gateway on another (same site, so the gateway's `SameSite=Lax` httpOnly
cookie is sent; cross-origin, so the gateway's CORS is exercised) and talks ChatKit through it to
the real backend, whose `/whoami` reply shows the metadata it received.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request

from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, gateway_config, start_gateway, user_claims, user_token
from tests.support.idp import LoopbackIdP

USER = {"sub": "browser-user", "name": "Browser User", "email": "b@example.com"}
PAGE_PATH = "/orders/42"
DESCRIPTION = "Bestellung für Zoë: 3 Artikel"
HEADINGS = ["Order 42", "Items", "Shipping address", "Payment", "Invoice ✓"]

# `GATEWAY` is replaced by the gateway's URL when the page is served.
PAGE = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>Orders</title>
<meta name="description" content="Bestellung für Zoë: 3 Artikel">
</head>
<body>
<h1>Order 42</h1>
<h2>Items</h2>
<h3>
  Shipping
     address
</h3>
<h2>  </h2>
<h4>Not a heading we send</h4>
<h2>Payment</h2>
<h3>Invoice ✓</h3>
<h2>History (the sixth: beyond maxHeadings)</h2>
<script type="module">
import * as helper from "GATEWAY/chatkit-gateway.js";

window.helper = helper;
window.unauthorized = [];
window.refreshes = 0;

const body = JSON.stringify({
  type: "threads.create",
  params: {input: {content: [{type: "input_text", text: "/whoami"}], attachments: [], inference_options: {}}},
});

// refresh: undefined (none), "cookie" (sets a valid cookie from Python), "noop" (does not help).
window.whoami = async ({refresh, asRequest = false, pageContext} = {}) => {
  const options = {onUnauthorized: async (response) => { window.unauthorized.push(response.status); }};
  if (refresh) {
    options.refresh = async () => {
      window.refreshes += 1;
      if (refresh === "cookie") await window.setCookie();
    };
  }
  if (pageContext === "throws") options.pageContext = () => { throw new Error("no page context today"); };
  const fetch = helper.createChatKitFetch(options);
  const url = "GATEWAY/chatkit";
  const headers = new Headers({"content-type": "application/json"});
  const response = asRequest
    ? await fetch(new Request(url, {method: "POST", headers, body}))
    : await fetch(url, {method: "POST", headers, body});
  const text = await response.text();
  let reply = null;
  if ((response.headers.get("content-type") || "").startsWith("text/event-stream")) {
    reply = "";
    for (const frame of text.split("\\n\\n")) {
      if (!frame.startsWith("data: ")) continue;
      const event = JSON.parse(frame.slice("data: ".length));
      if (event.type === "thread.item.updated" && event.update.type === "assistant_message.content_part.text_delta") {
        reply += event.update.delta;
      }
    }
  }
  return {status: response.status, reply, text};
};
window.helperLoaded = true;
</script>
</body>
</html>
"""


class PageServer:
    """The app's origin: serves PAGE on 127.0.0.1 from a thread."""

    def __init__(self) -> None:
        self.gateway_url = ""
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != PAGE_PATH:
                    self.send_error(404)
                    return
                content = PAGE.replace("GATEWAY", server.gateway_url).encode()
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="page-server")

    @property
    def page_url(self) -> str:
        return f"{self.origin}{PAGE_PATH}?tab=items#summary"

    @property
    def page_url_without_query(self) -> str:
        return f"{self.origin}{PAGE_PATH}"


@pytest.fixture(scope="module")
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser_gateway(backend: Backend, session_idp: LoopbackIdP, page_server: PageServer) -> Iterator[RunningGateway]:
    origins = [page_server.origin]
    overrides = {"cors": {"allow_origins": origins}, "security": {"allowed_origins": origins}}
    with start_gateway(gateway_config(backend.url, session_idp, overrides)) as running:
        page_server.gateway_url = running.url
        yield running


def auth_cookie(gateway: RunningGateway, token: str) -> dict[str, Any]:
    return {"name": "auth_token", "value": token, "url": gateway.url, "httpOnly": True, "sameSite": "Lax"}


@pytest.fixture
def context(browser: Browser, browser_gateway: RunningGateway, session_idp: LoopbackIdP) -> Iterator[BrowserContext]:
    """A browser signed in to the gateway by its httpOnly cookie, plus one cookie scripts may read."""
    ctx = browser.new_context()
    try:
        ctx.add_cookies(
            [
                auth_cookie(browser_gateway, user_token(session_idp, **USER)),
                {"name": "visible", "value": "1", "url": browser_gateway.url, "sameSite": "Lax"},
            ]
        )
        yield ctx
    finally:
        ctx.close()


class AppPage:
    """The loaded app page and the ChatKit POSTs it sent to the gateway."""

    def __init__(self, page: Page, chatkit_url: str) -> None:
        self.page = page
        self.chatkit_url = chatkit_url
        self.posts: list[Request] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        if request.method == "POST" and request.url == self.chatkit_url:
            self.posts.append(request)

    def whoami(self, **options: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate("options => window.whoami(options)", options)
        return result

    def metadata(self, result: dict[str, Any]) -> dict[str, Any]:
        assert result["status"] == 200, result
        report: dict[str, Any] = json.loads(result["reply"])
        return report


@pytest.fixture
def app(
    context: BrowserContext, browser_gateway: RunningGateway, page_server: PageServer, session_idp: LoopbackIdP
) -> Iterator[AppPage]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    # A token refresh as an app would do it: a new valid session cookie for the gateway.
    page.expose_function(
        "setCookie", lambda: context.add_cookies([auth_cookie(browser_gateway, user_token(session_idp, **USER))])
    )
    page.goto(page_server.page_url)
    try:
        page.wait_for_function("window.helperLoaded === true", timeout=5000)
    except Exception as error:
        raise AssertionError(f"the page could not load the helper: {errors}") from error
    yield AppPage(page, browser_gateway.chatkit_url)
    page.close()


def expected_page_context(page_server: PageServer) -> dict[str, str]:
    return {
        "url": page_server.page_url_without_query,
        "title": "Orders",
        "path": PAGE_PATH,
        "description": DESCRIPTION,
        "headings": ", ".join(HEADINGS),
    }


def test_the_helper_is_served_as_javascript_to_the_app_origin(
    browser_gateway: RunningGateway, page_server: PageServer
) -> None:
    response = httpx.get(
        f"{browser_gateway.url}/chatkit-gateway.js", headers={"origin": page_server.origin}, trust_env=False
    )

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0].strip() == "text/javascript"
    # A module script from another origin is fetched in CORS mode.
    assert response.headers["access-control-allow-origin"] == page_server.origin
    assert "export function createChatKitFetch" in response.text


def test_get_page_context_reads_the_page(app: AppPage, page_server: PageServer) -> None:
    context = app.page.evaluate("window.helper.getPageContext()")
    first = app.page.evaluate("window.helper.getPageContext({maxHeadings: 1}).headings")
    app.page.evaluate("document.querySelector('meta[name=description]').remove(); document.title = ''")
    bare = app.page.evaluate("window.helper.getPageContext({maxHeadings: 0})")

    assert context == {
        "url": page_server.page_url_without_query,
        "title": "Orders",
        "path": PAGE_PATH,
        "description": DESCRIPTION,
        "headings": HEADINGS,
    }
    assert first == ["Order 42"]
    assert bare == {"url": page_server.page_url_without_query, "path": PAGE_PATH}


def test_a_cookie_signed_in_page_sends_identity_and_page_context(
    app: AppPage, page_server: PageServer, session_idp: LoopbackIdP
) -> None:
    report = app.metadata(app.whoami())

    metadata = report["metadata"]
    assert metadata["userId"] == "browser-user"
    user_info = {"id": "browser-user", "name": "Browser User", "email": "b@example.com", "issuer": session_idp.issuer}
    assert metadata["userInfo"] == user_info
    assert metadata["pageContext"] == expected_page_context(page_server)
    assert metadata["requestId"]
    assert report["x-user-id"] == "browser-user"
    # The cookie authenticated the request: the page sent no Authorization header.
    (post,) = app.posts
    sent = post.all_headers()
    assert "authorization" not in sent
    assert "auth_token=" in sent.get("cookie", "")
    assert sent["x-chatkit-page-context"]
    assert report["authorization"] is None
    # ...and scripts on the page cannot read it.
    cookies = app.page.evaluate("document.cookie")
    assert "visible=1" in cookies
    assert "auth_token" not in cookies


def test_a_failing_page_context_leaves_the_request_alone(app: AppPage, page_server: PageServer) -> None:
    report = app.metadata(app.whoami(pageContext="throws"))

    (post,) = app.posts
    assert "x-chatkit-page-context" not in post.all_headers()
    assert report["metadata"]["userId"] == "browser-user"
    # Only the gateway's Referer fallback is left: a cross-origin fetch sends the origin alone.
    assert report["metadata"]["pageContext"] == {"url": page_server.origin + "/", "path": "/"}


def test_without_a_cookie_the_401_reaches_on_unauthorized_once(app: AppPage, context: BrowserContext) -> None:
    context.clear_cookies()

    result = app.whoami()

    assert result["status"] == 401
    assert json.loads(result["text"])["error"]["code"] == "missing_credentials"
    assert app.page.evaluate("window.unauthorized") == [401]
    assert len(app.posts) == 1


@pytest.mark.parametrize("as_request", [False, True], ids=["url-and-init", "request-object"])
def test_refresh_then_one_retry_succeeds(
    app: AppPage,
    context: BrowserContext,
    browser_gateway: RunningGateway,
    session_idp: LoopbackIdP,
    page_server: PageServer,
    as_request: bool,
) -> None:
    now = int(time.time())
    expired = session_idp.sign(user_claims(session_idp, iat=now - 7200, exp=now - 3600, **USER))
    context.clear_cookies()
    context.add_cookies([auth_cookie(browser_gateway, expired)])

    report = app.metadata(app.whoami(refresh="cookie", asRequest=as_request))

    assert report["metadata"]["userId"] == "browser-user"
    # The retried request carried the body and the page context again.
    assert report["metadata"]["pageContext"] == expected_page_context(page_server)
    assert app.page.evaluate("window.refreshes") == 1
    assert app.page.evaluate("window.unauthorized") == []
    assert len(app.posts) == 2


def test_a_refresh_that_does_not_help_is_not_retried_again(app: AppPage, context: BrowserContext) -> None:
    context.clear_cookies()

    result = app.whoami(refresh="noop")

    assert result["status"] == 401
    assert app.page.evaluate("window.refreshes") == 1
    assert app.page.evaluate("window.unauthorized") == [401]
    assert len(app.posts) == 2


def test_when_chatkit_ready_resolves_once_the_element_is_defined(app: AppPage) -> None:
    outcome = app.page.evaluate(
        """async () => {
            setTimeout(() => customElements.define("openai-chatkit", class extends HTMLElement {}), 100);
            const started = performance.now();
            const defined = await window.helper.whenChatKitReady({timeout: 5000});
            return {same: defined === customElements.get("openai-chatkit"), waited: performance.now() - started};
        }"""
    )

    assert outcome["same"] is True
    assert 50 <= outcome["waited"] < 5000


def test_when_chatkit_ready_rejects_after_the_timeout(app: AppPage) -> None:
    outcome = app.page.evaluate(
        """async () => {
            const started = performance.now();
            try {
                await window.helper.whenChatKitReady({timeout: 200});
                return {error: null};
            } catch (error) {
                const waited = performance.now() - started;
                return {error: error instanceof Error ? error.message : String(error), waited};
            }
        }"""
    )

    assert outcome["error"] is not None and "openai-chatkit" in outcome["error"]
    assert 150 <= outcome["waited"] < 2000
