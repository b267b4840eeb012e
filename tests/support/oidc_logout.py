"""A real OpenID provider that sends back-channel logouts: oidc-provider (npm) run by `node`.

`tests/support/node/oidc_logout_server.mjs` configures one client whose ID tokens carry `sid` and
whose `backchannel_logout_uri` is the gateway's; `make test` installs the locked npm packages
(`tests/support/node/package-lock.json`). `sign_in` walks the authorization code flow through
the provider's own sign-in form; `sign_out` walks RP-initiated logout, during which the provider
posts its logout token.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from tests.support.procs import PROJECT_ROOT, free_port, node_openid_server, process_log

SERVER_SCRIPT = PROJECT_ROOT / "tests" / "support" / "node" / "oidc_logout_server.mjs"
CLIENT_ID = "chatkit-gateway"
CLIENT_SECRET = "test-client-secret-of-enough-length"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # never followed: the tests read the code off the redirect


@dataclass(frozen=True)
class Session:
    """A signed-in browser at the provider: its cookies, and the ID token the client got."""

    browser: httpx.Client
    id_token: str

    def close(self) -> None:
        self.browser.close()

    @property
    def claims(self) -> dict[str, Any]:
        payload = self.id_token.split(".")[1]
        result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return result


@dataclass(frozen=True)
class OpenIDProvider:
    url: str
    process: Any

    def sign_in(self, user: str) -> Session:
        browser = httpx.Client(trust_env=False, follow_redirects=False, timeout=10)
        query = {"client_id": CLIENT_ID, "response_type": "code", "scope": "openid", "redirect_uri": REDIRECT_URI}
        response = browser.get(f"{self.url}/auth", params={**query, "state": "s", "nonce": "n"})
        while "code=" not in response.headers.get("location", ""):
            assert response.status_code in (302, 303), response.text
            location = urljoin(self.url, response.headers["location"])
            response = browser.get(location)
            if response.status_code == 200:  # the sign-in form
                response = browser.post(location, data={"prompt": "login", "login": user, "password": "any"})
        code = parse_qs(urlsplit(response.headers["location"]).query)["code"][0]
        tokens = httpx.post(
            f"{self.url}/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI},
            auth=(CLIENT_ID, CLIENT_SECRET),
            trust_env=False,
        )
        assert tokens.status_code == 200, tokens.text
        return Session(browser, tokens.json()["id_token"])

    def sign_out(self, session: Session) -> None:
        """RP-initiated logout, confirmed in the provider's form; the logout token goes out meanwhile."""
        page = session.browser.get(f"{self.url}/session/end", params={"id_token_hint": session.id_token})
        assert page.status_code == 200, page.text
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text)
        assert xsrf is not None, page.text
        done = session.browser.post(f"{self.url}/session/end/confirm", data={"xsrf": xsrf.group(1), "logout": "yes"})
        assert done.status_code in (302, 303), done.text

    def deliveries(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/_test/backchannel", trust_env=False).json()
        return result

    def log(self) -> str:
        return process_log(self.process)


@contextmanager
def start_openid_provider(backchannel_logout_uri: str) -> Iterator[OpenIDProvider]:
    port = free_port()
    settings = {
        "port": port,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": REDIRECT_URI,
        "backchannel_logout_uri": backchannel_logout_uri,
    }
    with node_openid_server(SERVER_SCRIPT, settings) as (url, proc):
        yield OpenIDProvider(url=url, process=proc)
