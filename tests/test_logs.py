"""Log redaction: whatever code writes a line, a credential in it never reaches the output."""

from __future__ import annotations

import logging
import sys

import pytest

from gateway.logs import CredentialRedactor, JSONFormatter, TextFormatter

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLWEtdG9rZW4"
OPAQUE = "0paqu3-s3cr3t-v4lu3"
redact = CredentialRedactor(["auth_token", "sid", "cookie_auth", "bearer_session"])

# How credentials show up in lines written by code other than the gateway's access log.
LEAKS = [
    pytest.param(f"< authorization: Bearer {OPAQUE}", id="websockets-debug-authorization"),
    pytest.param(f"< cookie: theme=dark; auth_token={OPAQUE}", id="websockets-debug-cookie"),
    pytest.param(f"< Cookie: sid={OPAQUE}", id="capitalised-header"),
    pytest.param(f"[(b'authorization', b'Bearer {OPAQUE}'), (b'cookie', b'x={OPAQUE}')]", id="asgi-headers-repr"),
    pytest.param(f"Headers({{'authorization': 'Basic {OPAQUE}'}})", id="headers-dict-repr"),
    pytest.param(f'{{"Cookie":"a={OPAQUE}"}}', id="json-object"),
    pytest.param(f'{{\\"set-cookie\\": \\"auth_token={OPAQUE}\\"}}', id="json-escaped-in-a-message"),
    pytest.param(f"x-chatkit-identity: {OPAQUE}", id="signed-identity-header"),
    pytest.param(f"InvalidURL: http://b/chatkit?access_token={OPAQUE}&x=1", id="token-in-a-query"),
    pytest.param(f"password={OPAQUE}", id="password-pair"),
    pytest.param(f"auth_token={OPAQUE}; sid={OPAQUE}", id="configured-cookie-pairs"),
    pytest.param(f"AUTH_TOKEN={OPAQUE}", id="cookie-name-in-other-case"),
    pytest.param(f"cookie_auth={OPAQUE}", id="cookie-name-holding-the-word-cookie"),
    pytest.param(f"bearer_session={OPAQUE}", id="cookie-name-holding-the-word-bearer"),
    pytest.param(f"token was {JWT}.", id="bare-jwt"),
    pytest.param(f"bearer\t{OPAQUE}", id="bearer-after-a-tab"),
]


@pytest.mark.parametrize("line", LEAKS)
def test_a_credential_in_a_line_is_redacted(line: str) -> None:
    redacted = redact(line)
    assert OPAQUE not in redacted and JWT not in redacted
    assert "[redacted]" in redacted


@pytest.mark.parametrize(
    "line",
    [
        pytest.param('{"source":"cookie","status":200,"error":"invalid_token"}', id="cookie-access-line"),
        pytest.param('{"source":"bearer","status":401}', id="bearer-access-line"),
        pytest.param("Cookie-authenticated requests must come from an allowed origin.", id="error-message"),
        pytest.param('"cookie_names":["auth_token"]', id="configuration-dump"),
        pytest.param('source="cookie" status=200', id="text-access-line"),
    ],
)
def test_lines_without_a_credential_are_left_alone(line: str) -> None:
    assert redact(line) == line


@pytest.mark.parametrize("formatter", [JSONFormatter(redact), TextFormatter(redact)], ids=["json", "text"])
def test_formatters_redact_messages_arguments_and_tracebacks(formatter: logging.Formatter) -> None:
    try:
        raise ValueError(f"Authorization: Bearer {OPAQUE}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, "header %s", (JWT,), exc_info)

    line = formatter.format(record)
    assert "ValueError" in line
    assert OPAQUE not in line and JWT not in line
