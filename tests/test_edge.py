"""Edge attacks over raw sockets against the gateway as users run it (security-anchors.md §4.3-4.6).

Every request here is bytes on a socket, because httpx would normalise or refuse most of them.
For each: the right 4xx (or the HTTP parser's own 400 and a closed connection), never a 500, and
the backend saw nothing it should not: requests that must not pass never arrive, and whatever does
arrive has the configured upstream's path (`/chatkit`), no query and the backend's own `Host`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, gateway_config, start_gateway
from tests.support.idp import LoopbackIdP
from tests.support.nginx import RunningNginx, serve_nginx_config
from tests.support.rawhttp import RawResponse, address_of, exchange, request_bytes

BODY = b'{"type":"threads.list","params":{}}'
JSON_CT = (b"content-type", b"application/json")
PARSER_400_BODY = b"Invalid HTTP request received."
MAX_HEADER_BYTES = 32 * 1024  # server.max_header_bytes, default
MAX_COOKIE_BYTES = 16 * 1024


def auth(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + token.encode())


def length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())


def post(target: bytes, *headers: tuple[bytes, bytes], body: bytes = BODY, host: bytes = b"gateway.test") -> bytes:
    """`POST target` with Host, JSON content type, the given headers and a Content-Length."""
    return request_bytes("POST", target, [(b"host", host), JSON_CT, *headers, length(body)], body)


def send(gateway: RunningGateway, data: bytes, *, timeout: float = 5.0, linger: float = 0.0) -> RawResponse:
    response = exchange(address_of(gateway.url), data, timeout=timeout, linger=linger)
    assert response.status != 500, f"500 from the gateway: {response.body!r}"
    return response


def backend_netloc(backend: Backend) -> str:
    return backend.url.removeprefix("http://")


def assert_only_configured_upstream(backend: Backend) -> list[dict[str, Any]]:
    """Every request the backend recorded went to `/chatkit`, without a query, addressed to itself."""
    received = backend.requests()
    for request in received:
        headers = dict(request["headers"])
        assert (request["method"], request["path"], request["query_string"]) == ("POST", "/chatkit", ""), request
        assert [value for name, value in request["headers"] if name == "host"] == [backend_netloc(backend)]
        assert "evil" not in headers.get("host", "")
    return received


# ------------------------------------------------------------------------------------- smuggling


def smuggled(token: str) -> bytes:
    """A complete authenticated request: if a framing trick smuggles it, the backend records it."""
    return post(b"/chatkit", auth(token))


def smuggling_cases(token: str) -> dict[str, bytes]:
    a = auth(token)
    chunked_body = b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"
    head = [(b"host", b"gateway.test"), JSON_CT, a]
    return {
        # CL says 4 bytes ("0\r\n\r"), TE says the body ends at "0\r\n\r\n": the rest is a second request.
        "cl-and-te": request_bytes(
            "POST",
            b"/chatkit",
            [*head, (b"content-length", b"4"), (b"transfer-encoding", b"chunked")],
            b"0\r\n\r\n" + smuggled(token),
        ),
        "te-and-cl-0": request_bytes(
            "POST", b"/chatkit", [*head, (b"transfer-encoding", b"chunked"), (b"content-length", b"0")], chunked_body
        ),
        "two-content-lengths": request_bytes(
            "POST", b"/chatkit", [*head, length(BODY), (b"content-length", b"5")], BODY + smuggled(token)
        ),
        "te-chunked-identity": request_bytes(
            "POST", b"/chatkit", [*head, (b"transfer-encoding", b"chunked, identity")], chunked_body
        ),
        "te-twice": request_bytes(
            "POST",
            b"/chatkit",
            [*head, (b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
            chunked_body,
        ),
        "te-space-before-colon": request_bytes(
            "POST", b"/chatkit", [*head, (b"transfer-encoding ", b"chunked"), length(BODY)], chunked_body
        ),
        "content-length-plus": request_bytes("POST", b"/chatkit", [*head, (b"content-length", b"+35")], BODY),
        "obs-fold": request_bytes(
            "POST", b"/chatkit", [*head, (b"x-folded", b"one\r\n two"), length(BODY)], BODY + smuggled(token)
        ),
        "bare-lf": request_bytes("POST", b"/chatkit", [*head, length(BODY)], BODY, eol=b"\n"),
        "nul-in-header": request_bytes("POST", b"/chatkit", [*head, (b"x-nul", b"a\x00b"), length(BODY)], BODY),
        "lower-case-method": request_bytes("post", b"/chatkit", [*head, length(BODY)], BODY),
    }


SMUGGLING = [
    "cl-and-te",
    "te-and-cl-0",
    "two-content-lengths",
    "te-chunked-identity",
    "te-twice",
    "te-space-before-colon",
    "content-length-plus",
    "obs-fold",
    "bare-lf",
    "nul-in-header",
    "lower-case-method",
]


@pytest.mark.parametrize("case", SMUGGLING)
def test_smuggling_forms_are_refused_by_the_parser_and_the_connection_closed(
    gateway: RunningGateway, clean_backend: Backend, token: str, case: str
) -> None:
    response = send(gateway, smuggling_cases(token)[case], linger=1.0)

    # uvicorn + httptools answers these itself (the gateway app never sees them) and closes.
    assert response.status == 400, response
    assert response.body == PARSER_400_BODY
    assert response.headers.get("connection") == "close"
    assert response.closed, "the connection must close after a framing error"
    assert response.trailing == b"", "no second (smuggled) response may follow"
    assert clean_backend.requests() == []


# ----------------------------------------------------------------------------------- path tricks

# target: (status without credentials, status with credentials). 404 is the gateway's exact path
# dispatch; 400 "parser" is httptools refusing the request line; 400 upload path is uploads.py.
PATH_TRICKS: dict[bytes, tuple[int, int]] = {
    b"//chatkit": (404, 404),
    b"//evil.example/chatkit": (404, 404),
    b"/chatkit/..%2fchatkit": (404, 404),
    b"/x/../chatkit": (404, 404),
    b"/%2e%2e/chatkit": (404, 404),
    b"/x/%2e%2e/chatkit": (404, 404),
    b"/chatkit%00": (404, 404),
    b"/chatkit%0a": (404, 404),
    b"/chatkit%2F": (404, 404),
    b"/chatkit/": (404, 404),
    b"/CHATKIT": (404, 404),
    b"/chatkit;x=1": (404, 404),
    b"/chatkit/uploads/../../chatkit": (400, 400),
    b"/chatkit/uploads/..%2f..%2fchatkit": (400, 400),
    # httptools takes the path of an absolute-form target: the gateway serves /chatkit, upstream unchanged.
    b"http://evil.example/chatkit": (401, 200),
    b"http://evil.example:80@127.0.0.1/chatkit": (401, 200),
    b"/chatkit?next=http://evil.example/": (401, 200),
    b"@evil/chatkit": (400, 400),
    b"@evil.example/chatkit": (400, 400),
}


@pytest.mark.parametrize("target", list(PATH_TRICKS), ids=[t.decode() for t in PATH_TRICKS])
def test_path_tricks_without_credentials_never_pass(
    gateway: RunningGateway, clean_backend: Backend, target: bytes
) -> None:
    response = send(gateway, post(target))

    assert response.status == PATH_TRICKS[target][0], response
    assert response.status != 200
    if response.status == 401:
        assert response.error_code == "missing_credentials"
    assert clean_backend.requests() == []


@pytest.mark.parametrize("target", list(PATH_TRICKS), ids=[t.decode() for t in PATH_TRICKS])
def test_path_tricks_with_credentials_never_change_the_upstream_path_or_host(
    gateway: RunningGateway, clean_backend: Backend, token: str, target: bytes
) -> None:
    response = send(gateway, post(target, auth(token)))

    assert response.status == PATH_TRICKS[target][1], response
    received = assert_only_configured_upstream(clean_backend)
    assert len(received) == (1 if response.status == 200 else 0)
    if response.status == 200:
        assert response.json() == {"data": [], "has_more": False}
    elif response.status == 404:
        assert response.error_code == "not_found"


# ---------------------------------------------------------------------------------- upload paths

UPLOADS = b"/chatkit/uploads/"
# A body that would speak for another user if it reached the ChatKit endpoint un-rewritten.
FORGED_BODY = b'{"type":"threads.list","params":{},"metadata":{"userId":"mallory","userInfo":{"roles":["admin"]}}}'

# REST after the uploads path, each a way to step out of `upstream.uploads_url` (to `/chatkit`, in
# the end) on some backend or front: judged as decoded once, refused with 400 before any upstream
# request. A double encoding (`%252e`) is refused too: a stack that decodes twice would see a dot.
UPLOAD_PATH_ATTACKS = [
    pytest.param(b"%2e./%2e./chatkit", id="encoded-dot-then-dot"),
    pytest.param(b".%2e/.%2e/chatkit", id="dot-then-encoded-dot"),
    pytest.param(b"%2e%2e/chatkit", id="encoded-dot-dot"),
    pytest.param(b"%2E%2e/chatkit", id="encoded-dot-dot-mixed-case"),
    pytest.param(b"%2e/chatkit", id="encoded-dot"),
    pytest.param(b"./chatkit", id="dot"),
    pytest.param(b"../chatkit", id="dot-dot"),
    pytest.param(b"attachments/../../chatkit", id="dot-dot-after-a-segment"),
    pytest.param(b"..;/chatkit", id="dot-dot-semicolon"),
    pytest.param(b".;/chatkit", id="dot-semicolon"),
    pytest.param(b"..;jsessionid=x/chatkit", id="dot-dot-path-parameter"),
    pytest.param(b"..%3b/chatkit", id="dot-dot-encoded-semicolon"),
    pytest.param(b"a%2f..%2f..%2fchatkit", id="encoded-slash"),
    pytest.param(b"a%2F..%2F..%2Fchatkit", id="encoded-slash-upper-case"),
    pytest.param(b"a%5c..%5c..%5cchatkit", id="encoded-backslash"),
    pytest.param(b"a%5C..%5C..%5Cchatkit", id="encoded-backslash-upper-case"),
    pytest.param(b"a\\..\\..\\chatkit", id="backslash"),
    pytest.param(b"attachments/atc%00.png/upload", id="encoded-nul"),
    pytest.param(b"attachments/atc%0a/upload", id="encoded-newline"),
    pytest.param(b"attachments/atc%7f/upload", id="encoded-del"),
    pytest.param(b"%252e%252e/chatkit", id="double-encoded-dot-dot"),
    pytest.param(b"%25%32%65%25%32%65/chatkit", id="double-encoded-every-byte"),
    pytest.param(b"%c0%ae%c0%ae/chatkit", id="overlong-utf8-dot-dot"),
    pytest.param(b"%ef%bc%8e%ef%bc%8e/chatkit", id="fullwidth-dot-dot"),
    pytest.param(b"%e2%80%a5/chatkit", id="two-dot-leader"),
    pytest.param(b"attachments/%ff/upload", id="invalid-utf8"),
    pytest.param(b"attachments/%zz/upload", id="malformed-escape"),
    pytest.param(b"attachments/%2", id="truncated-escape"),
    pytest.param(b"attachments//upload", id="empty-segment"),
    pytest.param(b"/chatkit", id="leading-slash"),
    pytest.param(b"", id="nothing"),
]


@pytest.mark.parametrize("rest", UPLOAD_PATH_ATTACKS)
@pytest.mark.parametrize("credentials", [True, False], ids=["bearer", "anonymous"])
def test_upload_paths_that_could_leave_the_uploads_url_get_400_and_the_backend_gets_nothing(
    gateway: RunningGateway, clean_backend: Backend, token: str, rest: bytes, credentials: bool
) -> None:
    headers = [auth(token)] if credentials else []
    response = send(gateway, post(UPLOADS + rest, *headers, body=FORGED_BODY))

    assert response.status == 400, response
    assert response.headers["content-type"] == "application/json"
    assert response.error_code == "invalid_upload_path"
    assert clean_backend.requests() == []


# A backend behind a front that routes on the normalized path, as nginx does: it decodes, removes
# dot segments (RFC 3986 5.2.4), then picks the location; `proxy_pass` with a URI sends that path.
NORMALIZING_FRONT = """
server {
    listen {{LISTEN}};
    location = /chatkit { proxy_pass http://{{BACKEND}}/chatkit; }
    location /uploads/ { proxy_pass http://{{BACKEND}}; }
}
"""


@pytest.fixture(scope="module")
def fronted_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[tuple[RunningNginx, RunningGateway]]:
    """The gateway with uploads of their own (`/uploads/`), in front of nginx in front of the backend."""
    with serve_nginx_config(NORMALIZING_FRONT, BACKEND=backend_netloc(backend)) as front:
        with start_gateway(gateway_config(front.url, session_idp)) as gateway:
            yield front, gateway


@pytest.mark.parametrize(
    "rest",
    [
        pytest.param(b"%2e./chatkit", id="encoded-dot-then-dot"),
        pytest.param(b".%2e/chatkit", id="dot-then-encoded-dot"),
        pytest.param(b"%2E%2E/chatkit", id="encoded-dot-dot"),
    ],
)
def test_behind_a_normalizing_front_a_forged_body_never_reaches_the_chatkit_endpoint(
    fronted_gateway: tuple[RunningNginx, RunningGateway], clean_backend: Backend, token: str, rest: bytes
) -> None:
    front, gateway = fronted_gateway
    # The premise: sent to the front directly, this upload path is the ChatKit endpoint.
    direct = exchange(address_of(front.url), post(b"/uploads/" + rest, body=FORGED_BODY))
    assert direct.status == 200, direct
    assert [(r["path"], r["json"]["metadata"]["userId"]) for r in clean_backend.requests()] == [("/chatkit", "mallory")]
    clean_backend.reset()

    response = send(gateway, post(UPLOADS + rest, auth(token), body=FORGED_BODY))

    assert response.status == 400, response
    assert response.error_code == "invalid_upload_path"
    assert clean_backend.requests() == []


# REST the backend's own upload URLs may hold: forwarded, still encoded as received.
UPLOAD_PATHS_FORWARDED = [
    pytest.param(b"attachments/atc_x/upload", id="plain"),
    pytest.param(b"attachments/atc%5Fx/upload", id="encoded-underscore"),
    pytest.param(b"attachments/caf%C3%A9/upload", id="encoded-utf8"),
    pytest.param(b"attachments/a...b/upload", id="dots-inside-a-name"),
    pytest.param(b"attachments/.../upload", id="three-dots"),
]


@pytest.mark.parametrize("rest", UPLOAD_PATHS_FORWARDED)
def test_upload_paths_that_stay_under_the_uploads_url_are_forwarded_as_received(
    gateway: RunningGateway, clean_backend: Backend, token: str, rest: bytes
) -> None:
    response = send(gateway, post(UPLOADS + rest, auth(token), body=b"{}"))

    assert response.status == 404, response  # the backend's answer: no such attachment
    (received,) = clean_backend.requests()
    assert (received["method"], received["raw_path"]) == ("POST", "/uploads/" + rest.decode())


# ------------------------------------------------------------------------------------------ Host


def the_one_upstream_request(backend: Backend) -> dict[str, str]:
    received = assert_only_configured_upstream(backend)
    assert len(received) == 1, received
    return {name: value for name, value in received[0]["headers"]}


def test_host_header_cannot_redirect_the_upstream(gateway: RunningGateway, clean_backend: Backend, token: str) -> None:
    response = send(gateway, post(b"/chatkit", auth(token), host=b"evil.example"))

    assert response.status == 200, response
    headers = the_one_upstream_request(clean_backend)
    assert headers["host"] == backend_netloc(clean_backend)
    # The client's Host travels only as a header value, for the backend's information.
    assert headers["x-forwarded-host"] == "evil.example"


def test_x_forwarded_host_and_forwarded_cannot_redirect_the_upstream(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    spoofed = [
        (b"x-forwarded-host", b"evil.example"),
        (b"forwarded", b"for=1.2.3.4;host=evil.example;proto=https"),
        (b"x-original-url", b"/_debug/reset"),
        (b"x-rewrite-url", b"/_debug/reset"),
        (b"x-http-method-override", b"GET"),
    ]
    response = send(gateway, post(b"/chatkit", auth(token), *spoofed))

    assert response.status == 200, response
    headers = the_one_upstream_request(clean_backend)
    assert headers["host"] == backend_netloc(clean_backend)
    assert headers["x-forwarded-host"] == "gateway.test"  # the client's Host, not its X-Forwarded-Host
    for name in ("forwarded", "x-original-url", "x-rewrite-url", "x-http-method-override"):
        assert name not in headers
    assert not any("evil" in value for value in headers.values())


def test_two_host_headers_cannot_redirect_the_upstream(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    # httptools passes both Host headers to the app (security-anchors.md §4.4).
    data = request_bytes(
        "POST",
        b"/chatkit",
        [(b"host", b"gateway.test"), (b"host", b"evil.example"), JSON_CT, auth(token), length(BODY)],
    )
    response = send(gateway, data + BODY)

    assert response.status == 200, response
    headers = the_one_upstream_request(clean_backend)
    assert headers["host"] == backend_netloc(clean_backend)


# ------------------------------------------------------------------------------------ big heads


def assert_headers_too_large(response: RawResponse) -> None:
    assert response.status == 431, response
    assert response.headers["content-type"] == "application/json"
    assert response.error_code == "headers_too_large"


def test_one_40_kib_header_gets_431(gateway: RunningGateway, clean_backend: Backend, token: str) -> None:
    response = send(gateway, post(b"/chatkit", auth(token), (b"x-big", b"a" * 40 * 1024)))

    assert_headers_too_large(response)
    assert clean_backend.requests() == []


def test_many_small_headers_over_32_kib_get_431(gateway: RunningGateway, clean_backend: Backend, token: str) -> None:
    many = [(b"x-h%04d" % n, b"v" * 90) for n in range(400)]  # 400 headers, 38 KB in all
    response = send(gateway, post(b"/chatkit", auth(token), *many))

    assert_headers_too_large(response)
    assert clean_backend.requests() == []


def test_a_40_kib_authorization_header_gets_431_before_any_token_work(
    gateway: RunningGateway, clean_backend: Backend
) -> None:
    response = send(gateway, post(b"/chatkit", (b"authorization", b"Bearer " + b"a" * 40 * 1024)))

    assert_headers_too_large(response)
    assert clean_backend.requests() == []


def padded_to(total: int, token: str) -> bytes:
    """A request whose header bytes (names plus values, as the gateway counts them) sum to `total`."""
    fixed = [(b"host", b"gateway.test"), JSON_CT, auth(token), length(BODY)]
    used = sum(len(name) + len(value) for name, value in fixed) + len(b"x-pad")
    return request_bytes("POST", b"/chatkit", [*fixed, (b"x-pad", b"p" * (total - used))], BODY)


def test_headers_at_the_limit_pass_and_one_byte_over_gets_431(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    assert send(gateway, padded_to(MAX_HEADER_BYTES, token)).status == 200
    assert_headers_too_large(send(gateway, padded_to(MAX_HEADER_BYTES + 1, token)))
    assert len(assert_only_configured_upstream(clean_backend)) == 1


def test_a_cookie_header_over_16_kib_gets_401_even_with_a_valid_token(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    cookie = b"auth_token=" + token.encode() + b"; pad=" + b"c" * MAX_COOKIE_BYTES
    assert MAX_COOKIE_BYTES < len(cookie) < MAX_HEADER_BYTES - 1024  # under the 431 bound: the cookie rule decides
    response = send(gateway, post(b"/chatkit", (b"cookie", cookie), (b"origin", b"http://gateway.test")))

    assert response.status == 401, response
    assert response.error_code == "invalid_token"
    assert clean_backend.requests() == []


def test_cookie_headers_split_in_two_count_together(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    half = b"c" * (MAX_COOKIE_BYTES // 2 + 16)
    cookies = [(b"cookie", b"auth_token=" + token.encode()), (b"cookie", b"a=" + half), (b"cookie", b"b=" + half)]
    response = send(gateway, post(b"/chatkit", *cookies, (b"origin", b"http://gateway.test")))

    assert response.status == 401, response
    assert response.error_code == "invalid_token"
    assert clean_backend.requests() == []


def test_a_bearer_token_over_max_token_bytes_gets_401(gateway: RunningGateway, clean_backend: Backend) -> None:
    response = send(gateway, post(b"/chatkit", (b"authorization", b"Bearer " + b"e" * 9000)))

    assert response.status == 401, response
    assert response.error_code == "invalid_token"
    assert clean_backend.requests() == []


def test_a_declared_10_gb_body_gets_413_at_once(gateway: RunningGateway, clean_backend: Backend, token: str) -> None:
    head = request_bytes(
        "POST", b"/chatkit", [(b"host", b"gateway.test"), JSON_CT, auth(token), (b"content-length", b"10737418240")]
    )
    started = time.monotonic()
    response = send(gateway, head + b'{"type":', timeout=5)

    assert response.status == 413, response
    assert response.error_code == "payload_too_large"
    assert response.elapsed < 1.0 and time.monotonic() - started < 2.0
    assert clean_backend.requests() == []
