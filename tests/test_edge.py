"""Edge attacks over raw sockets against the gateway as users run it (security-anchors.md §4.3-4.6).

Every request here is bytes on a socket, because httpx would normalise or refuse most of them.
For each: the right 4xx (or the HTTP parser's own 400 and a closed connection), never a 500, and
the backend saw nothing it should not: requests that must not pass never arrive, and whatever does
arrive has the configured upstream's path (`/chatkit`), no query and the backend's own `Host`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fixtures import Backend
from tests.support.gateway import RunningGateway, gateway_config, start_gateway, user_token
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


def post_bytes(
    target: bytes, *headers: tuple[bytes, bytes], body: bytes = BODY, host: bytes = b"gateway.test"
) -> bytes:
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
    return post_bytes(b"/chatkit", auth(token))


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
    response = send(gateway, post_bytes(target))

    assert response.status == PATH_TRICKS[target][0], response
    assert response.status != 200
    if response.status == 401:
        assert response.error_code == "missing_credentials"
    assert clean_backend.requests() == []


@pytest.mark.parametrize("target", list(PATH_TRICKS), ids=[t.decode() for t in PATH_TRICKS])
def test_path_tricks_with_credentials_never_change_the_upstream_path_or_host(
    gateway: RunningGateway, clean_backend: Backend, token: str, target: bytes
) -> None:
    response = send(gateway, post_bytes(target, auth(token)))

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
    response = send(gateway, post_bytes(UPLOADS + rest, *headers, body=FORGED_BODY))

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
    direct = exchange(address_of(front.url), post_bytes(b"/uploads/" + rest, body=FORGED_BODY))
    assert direct.status == 200, direct
    assert [(r["path"], r["json"]["metadata"]["userId"]) for r in clean_backend.requests()] == [("/chatkit", "mallory")]
    clean_backend.reset()

    response = send(gateway, post_bytes(UPLOADS + rest, auth(token), body=FORGED_BODY))

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
    response = send(gateway, post_bytes(UPLOADS + rest, auth(token), body=b"{}"))

    assert response.status == 404, response  # the backend's answer: no such attachment
    (received,) = clean_backend.requests()
    assert (received["method"], received["raw_path"]) == ("POST", "/uploads/" + rest.decode())


# ------------------------------------------------------------------------------------------ Host


def the_one_upstream_request(backend: Backend) -> dict[str, str]:
    received = assert_only_configured_upstream(backend)
    assert len(received) == 1, received
    return {name: value for name, value in received[0]["headers"]}


def test_host_header_cannot_redirect_the_upstream(gateway: RunningGateway, clean_backend: Backend, token: str) -> None:
    response = send(gateway, post_bytes(b"/chatkit", auth(token), host=b"evil.example"))

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
    response = send(gateway, post_bytes(b"/chatkit", auth(token), *spoofed))

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
    response = send(gateway, post_bytes(b"/chatkit", auth(token), (b"x-big", b"a" * 40 * 1024)))

    assert_headers_too_large(response)
    assert clean_backend.requests() == []


def test_many_small_headers_over_32_kib_get_431(gateway: RunningGateway, clean_backend: Backend, token: str) -> None:
    many = [(b"x-h%04d" % n, b"v" * 90) for n in range(400)]  # 400 headers, 38 KB in all
    response = send(gateway, post_bytes(b"/chatkit", auth(token), *many))

    assert_headers_too_large(response)
    assert clean_backend.requests() == []


def test_a_40_kib_authorization_header_gets_431_before_any_token_work(
    gateway: RunningGateway, clean_backend: Backend
) -> None:
    response = send(gateway, post_bytes(b"/chatkit", (b"authorization", b"Bearer " + b"a" * 40 * 1024)))

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
    response = send(gateway, post_bytes(b"/chatkit", (b"cookie", cookie), (b"origin", b"http://gateway.test")))

    assert response.status == 401, response
    assert response.error_code == "invalid_token"
    assert clean_backend.requests() == []


def test_cookie_headers_split_in_two_count_together(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    half = b"c" * (MAX_COOKIE_BYTES // 2 + 16)
    cookies = [(b"cookie", b"auth_token=" + token.encode()), (b"cookie", b"a=" + half), (b"cookie", b"b=" + half)]
    response = send(gateway, post_bytes(b"/chatkit", *cookies, (b"origin", b"http://gateway.test")))

    assert response.status == 401, response
    assert response.error_code == "invalid_token"
    assert clean_backend.requests() == []


def test_a_bearer_token_over_max_token_bytes_gets_401(gateway: RunningGateway, clean_backend: Backend) -> None:
    response = send(gateway, post_bytes(b"/chatkit", (b"authorization", b"Bearer " + b"e" * 9000)))

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


# --------------------------------------------------------------------------------- long targets

MAX_TARGET_BYTES = 8 * 1024  # the request target bound: raw path, "?" and query, in bytes


def padded_target(path: bytes, total: int) -> bytes:
    """`path?q=...` of exactly `total` bytes."""
    return path + b"?q=" + b"a" * (total - len(path) - 3)


def options(target: bytes) -> bytes:
    headers = [(b"host", b"gateway.test"), (b"origin", b"https://app.example.com")]
    return request_bytes("OPTIONS", target, [*headers, (b"access-control-request-method", b"POST")])


def get(target: bytes, *headers: tuple[bytes, bytes]) -> bytes:
    return request_bytes("GET", target, [(b"host", b"gateway.test"), *headers])


def put(target: bytes, token: str) -> bytes:
    body = b"upload bytes"
    headers = [(b"host", b"gateway.test"), auth(token), (b"content-type", b"application/octet-stream"), length(body)]
    return request_bytes("PUT", target, headers, body)


LONG_TARGETS: dict[str, Any] = {
    "chatkit-query": lambda token: post_bytes(padded_target(b"/chatkit", MAX_TARGET_BYTES + 1), auth(token)),
    "chatkit-without-credentials": lambda token: post_bytes(padded_target(b"/chatkit", MAX_TARGET_BYTES + 1)),
    "upload-path": lambda token: put(b"/chatkit/uploads/" + b"a" * MAX_TARGET_BYTES, token),
    # ~65,500 bytes: httpx refuses the upload URL built from it (InvalidURL), once a plain-text 500.
    "upload-path-65500": lambda token: put(b"/chatkit/uploads/" + b"a" * 65_500, token),
    "upload-query": lambda token: put(padded_target(b"/chatkit/uploads/attachments/x/upload", 20_000), token),
    "healthz": lambda token: get(padded_target(b"/healthz", MAX_TARGET_BYTES + 1)),
    "auth-verify": lambda token: get(padded_target(b"/auth/verify", MAX_TARGET_BYTES + 1), auth(token)),
    "unknown-route": lambda token: get(b"/" + b"n" * MAX_TARGET_BYTES),
    "cors-preflight": lambda token: options(padded_target(b"/chatkit", MAX_TARGET_BYTES + 1)),
}


@pytest.mark.parametrize("case", list(LONG_TARGETS))
def test_a_request_target_over_8_kib_gets_a_json_414_on_every_route(
    gateway: RunningGateway, clean_backend: Backend, token: str, case: str
) -> None:
    response = send(gateway, LONG_TARGETS[case](token), timeout=10)

    assert response.status == 414, response
    assert response.headers["content-type"] == "application/json"
    assert response.error_code == "uri_too_long"
    assert clean_backend.requests() == []


def test_a_request_target_of_exactly_8_kib_is_served(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    response = send(gateway, post_bytes(padded_target(b"/chatkit", MAX_TARGET_BYTES), auth(token)))

    assert response.status == 200, response
    assert len(assert_only_configured_upstream(clean_backend)) == 1


# ---------------------------------------------------------------------------------- deep JSON

MAX_DEPTH = 256  # levels of JSON nesting, the top-level value being level 1


def nested_body(levels: int, *, at: str = "extra") -> bytes:
    """A threads.list body whose `at` member holds arrays, so that the whole body has `levels` levels."""
    inner = b"[" * (levels - 1) + b"]" * (levels - 1)
    return b'{"type":"threads.list","params":{},"' + at.encode() + b'":' + inner + b"}"


def reported_body(levels: int) -> bytes:
    """The reported shape: arrays under `params`, and a surrogate pair that sends the parsed body
    to a re-encode (which recursed once per level, a few frames deeper than the parse)."""
    return b'{"type":"threads.list","e":"\\ud83d\\ude00","params":' + b"[" * levels + b"]" * levels + b"}"


# Where the parse still fits the interpreter's recursion limit and the re-encode no longer does
# depends on the stack below the app: the whole band around the limit is tried (972-976 levels
# gave 500s before the bound).
AROUND_THE_RECURSION_LIMIT = range(900, 1001)

DEEP_BODIES: dict[str, bytes] = {
    "reported-979-levels": reported_body(979),
    "257-levels": nested_body(MAX_DEPTH + 1),
    "257-levels-in-metadata": nested_body(MAX_DEPTH + 1, at="metadata"),
    "100000-levels": nested_body(100_000),
    "objects-20000-levels": b'{"type":"threads.list","params":' + b'{"a":' * 20_000 + b"1" + b"}" * 20_001,
}


@pytest.mark.parametrize("case", list(DEEP_BODIES))
def test_json_nested_deeper_than_256_levels_gets_400_invalid_json(
    gateway: RunningGateway, clean_backend: Backend, token: str, case: str
) -> None:
    response = send(gateway, post_bytes(b"/chatkit", auth(token), body=DEEP_BODIES[case]))

    assert response.status == 400, response
    assert response.error_code == "invalid_json"
    assert clean_backend.requests() == []


def test_the_reported_body_gets_400_at_every_depth_around_the_recursion_limit(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    for levels in AROUND_THE_RECURSION_LIMIT:
        response = send(gateway, post_bytes(b"/chatkit", auth(token), body=reported_body(levels)))
        assert (response.status, response.error_code) == (400, "invalid_json"), (levels, response)
    assert clean_backend.requests() == []


def test_json_nested_256_levels_deep_reaches_the_backend(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    body = nested_body(MAX_DEPTH)
    response = send(gateway, post_bytes(b"/chatkit", auth(token), body=body))

    assert response.error_code != "invalid_json", response
    (received,) = assert_only_configured_upstream(clean_backend)
    assert received["json"]["extra"] == json.loads(body)["extra"]


# ----------------------------------------------------------------------------- upgrades

WS_HANDSHAKE = [
    (b"connection", b"Upgrade"),
    (b"upgrade", b"websocket"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
]
H2C = [(b"connection", b"Upgrade, HTTP2-Settings"), (b"upgrade", b"h2c"), (b"http2-settings", b"AAMAAABkAAQAAP__")]


def credentials(token: str) -> list[tuple[bytes, bytes]]:
    return [auth(token), (b"cookie", b"auth_token=" + token.encode()), (b"origin", b"http://gateway.test")]


UPGRADES: dict[str, Any] = {
    "websocket-chatkit": lambda token: get(b"/chatkit", *WS_HANDSHAKE, *credentials(token)),
    "websocket-chatkit-cross-site-cookie": lambda token: get(
        b"/chatkit", *WS_HANDSHAKE, (b"cookie", b"auth_token=" + token.encode()), (b"origin", b"https://evil.example")
    ),
    "websocket-healthz": lambda token: get(b"/healthz", *WS_HANDSHAKE),
    "websocket-unknown-route": lambda token: get(b"/socket", *WS_HANDSHAKE, auth(token)),
    "websocket-uploads": lambda token: get(b"/chatkit/uploads/x", *WS_HANDSHAKE, auth(token)),
    "h2c-post-chatkit": lambda token: post_bytes(b"/chatkit", *H2C, auth(token)),
    "h2c-get-healthz": lambda token: get(b"/healthz", *H2C),
}


@pytest.mark.parametrize("case", list(UPGRADES))
def test_an_upgrade_request_is_answered_as_plain_http_without_switching_protocols(
    gateway: RunningGateway, clean_backend: Backend, token: str, case: str
) -> None:
    response = send(gateway, UPGRADES[case](token))

    assert response.status not in (0, 101, 500), response
    assert response.headers.get("upgrade") is None
    # Upgraded or not, nothing reaches the backend over a route that is not its own.
    assert_only_configured_upstream(clean_backend)


# ------------------------------------------------------ a debug-level gateway with stream errors


@pytest.fixture(scope="module")
def debug_gateway(backend: Backend, session_idp: LoopbackIdP) -> Iterator[RunningGateway]:
    """Logging at `debug` (where libraries print headers), and answering refused streaming ops in-chat
    (so an unauthenticated body is read and parsed)."""
    overrides = {"logging": {"level": "debug", "format": "json"}, "auth": {"stream_errors": True}}
    with start_gateway(gateway_config(backend.url, session_idp, overrides)) as running:
        yield running


def streaming_body(size: int) -> bytes:
    """A threads.create body of exactly `size` bytes."""
    head = b'{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"'
    tail = b'"}],"attachments":[],"inference_options":{}}}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize(
    ("size", "answer"),
    [
        pytest.param(1024, "in-chat", id="1-kib"),
        pytest.param(64 * 1024, "in-chat", id="64-kib"),
        pytest.param(64 * 1024 + 1, "plain-401", id="64-kib-and-1-byte"),
        pytest.param(1024 * 1024, "plain-401", id="1-mib"),
    ],
)
def test_an_unauthenticated_body_is_read_to_64_kib_at_most_to_find_its_op(
    debug_gateway: RunningGateway, clean_backend: Backend, size: int, answer: str
) -> None:
    response = send(debug_gateway, post_bytes(b"/chatkit", body=streaming_body(size)), timeout=10)

    if answer == "in-chat":
        assert response.status == 200, response
        assert response.headers["content-type"].startswith("text/event-stream")
        assert b'"type":"error"' in response.body
    else:
        assert response.status == 401, response
        assert response.error_code == "missing_credentials"
    assert clean_backend.requests() == []


def test_deep_json_without_credentials_gets_the_plain_401(
    debug_gateway: RunningGateway, clean_backend: Backend
) -> None:
    bodies = [reported_body(levels) for levels in AROUND_THE_RECURSION_LIMIT] + [DEEP_BODIES["100000-levels"]]
    for body in bodies:
        response = send(debug_gateway, post_bytes(b"/chatkit", body=body))
        assert (response.status, response.error_code) == (401, "missing_credentials"), (len(body), response)
    assert clean_backend.requests() == []


def test_no_credential_or_traceback_reaches_a_debug_log_whatever_is_sent(
    debug_gateway: RunningGateway, clean_backend: Backend, session_idp: LoopbackIdP
) -> None:
    valid = user_token(session_idp, sub="logged-user")
    forged = valid.rsplit(".", 1)[0] + ".c2lnbmF0dXJlLW9mLWEtZm9yZ2VkLXRva2VuLW5ldmVyLWxvZ2dlZA"
    side_cookie = b"s3ss10n-c00k1e-v4lue-never-logged"
    requests: list[bytes] = []
    for token in (valid, forged):
        cookie = (b"cookie", b"auth_token=" + token.encode() + b"; session=" + side_cookie)
        own_origin = (b"origin", b"http://gateway.test")
        requests += [
            post_bytes(b"/chatkit", auth(token)),
            post_bytes(b"/chatkit", cookie, own_origin),
            post_bytes(b"/chatkit", cookie, (b"origin", b"https://evil.example@gateway.test")),
            post_bytes(b"/chatkit", auth(token), body=DEEP_BODIES["reported-979-levels"]),
            post_bytes(b"/chatkit", cookie, own_origin, body=b'{"type":"threads.list","params":{"x":"\\ud800"}}'),
            post_bytes(padded_target(b"/chatkit", MAX_TARGET_BYTES + 1), auth(token)),
            post_bytes(b"/chatkit?access_token=" + token.encode(), auth(token)),
            put(b"/chatkit/uploads/" + b"a" * 65_500, token),
            put(b"/chatkit/uploads/attachments/x/upload?token=" + token.encode(), token),
            get(b"/auth/verify", cookie, own_origin),
            *(make(token) for make in UPGRADES.values()),
            get(b"/socket", *WS_HANDSHAKE, cookie, (b"authorization", b"Basic " + token.encode())),
        ]
    for data in requests:
        response = send(debug_gateway, data, timeout=10)
        assert response.status != 0, "the gateway must answer every one of these"

    log = debug_gateway.log()  # read while the gateway still runs: the file goes with it
    assert '"level":"debug"' in log, "nothing at debug level was logged, so this check would prove less"
    for line in log.splitlines():
        assert isinstance(json.loads(line), dict), line
    for secret in (valid, forged, valid.rsplit(".", 1)[1], forged.rsplit(".", 1)[1], side_cookie.decode()):
        assert secret not in log
    for text in ("Bearer ey", "auth_token=ey", "Traceback", '"level":"error"', "No supported WebSocket library"):
        assert text not in log


def test_bytes_after_an_upgrade_request_are_never_served_as_a_request(
    gateway: RunningGateway, clean_backend: Backend, token: str
) -> None:
    # What follows an `Upgrade` head is the other protocol's, so uvicorn never parses it: a
    # request hidden there (in what Content-Length calls the body) must not reach the backend.
    hidden = post_bytes(b"/chatkit", auth(token))
    head = [(b"host", b"gateway.test"), JSON_CT, *H2C, auth(token), length(hidden)]
    response = send(gateway, request_bytes("POST", b"/chatkit", head, hidden), linger=1.0)

    assert response.status == 400, response
    assert response.trailing == b""
    assert clean_backend.requests() == []
