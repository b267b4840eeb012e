"""Log lines: JSON (one object per line) or text, never a credential.

The gateway's own lines carry no credential by construction (observe.py). Other code logs too:
uvicorn, httpx, a WebSocket library at `debug`, a traceback quoting an exception's message. So the
finished text of every line, whoever wrote it, passes `CredentialRedactor` last: bearer and basic
credentials, JWT-shaped strings, `Authorization`/`Cookie`/`Set-Cookie`/`X-ChatKit-Identity`
values, and `name=value` pairs of the configured cookie names and of token-like query parameters
become `[redacted]`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

import orjson

from .config import LoggingConfig

__all__ = ["CredentialRedactor", "JSONFormatter", "TextFormatter", "configure_logging"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
REDACTED = "[redacted]"
# Query parameters and form fields that carry credentials (OAuth 2.0, RFC 6749 4.2.2 and 5.1).
SECRET_PARAMETERS = ("access_token", "id_token", "refresh_token", "token", "client_secret", "password", "api_key")
_HEADER_NAMES = r"(?:proxy-authorization|authorization|set-cookie|cookie|x-chatkit-identity)"
# What follows a header name in the ways code prints headers: `name: v` (HTTP, debug dumps),
# `"name":"v"` (JSON, maybe escaped once more inside a JSON line) and `(b'name', b'v')` (repr).
_SEPARATOR = r"""(?:\\?["'])?(?:[ \t]*[:=][ \t]*|,[ \t]+b?(?=["']))(?:\\?["'])?"""

_WHITESPACE = re.compile(r"\s")


class CredentialRedactor:
    """Replaces credential-shaped text in a finished log line with `[redacted]`.

    A search for plain substrings on the lower-cased line comes first (about 2 us on an access
    line, which has nothing to redact; one pattern with classes or look-arounds costs 6-16 us
    there); the rules run only on a line where it finds something.
    """

    def __init__(self, cookie_names: Iterable[str] = ()) -> None:
        names = sorted({*cookie_names, *SECRET_PARAMETERS}, key=len, reverse=True)
        # "cookie" and "bearer" are in every access line of their kind (`"source":"cookie",`):
        # they count only when what their rule needs follows (a separator, a space).
        self._then = {"cookie": re.compile(_SEPARATOR), "bearer": _WHITESPACE, "basic": _WHITESPACE}
        triggers = {"eyj", "authorization", "identity", *self._then}
        triggers.update(f"{name.lower()}=" for name in names)
        # A trigger inside another ("token=" in "access_token=") is enough on its own, unless it
        # counts only on conditions ("cookie" in a cookie named "cookie_auth"). Longest first, so
        # that the longer of two triggers at one place is the one found.
        minimal = [t for t in triggers if not any(o != t and o in t and o not in self._then for o in triggers)]
        minimal.sort(key=lambda trigger: (-len(trigger), trigger))
        self._trigger = re.compile("|".join(map(re.escape, minimal)))
        pairs = "|".join(map(re.escape, names))
        self._rules = (
            (re.compile(rf"""(\b{_HEADER_NAMES}{_SEPARATOR})[^"'\r\n\\]+""", re.IGNORECASE), rf"\g<1>{REDACTED}"),
            (re.compile(r"""(\b(?:bearer|basic)\s+)[^\s"',;\\]+""", re.IGNORECASE), rf"\g<1>{REDACTED}"),
            (
                re.compile(rf"""((?<![\w.-])(?:{pairs})=(?:\\?")?)[^&;\s"',\\#]+""", re.IGNORECASE),
                rf"\g<1>{REDACTED}",
            ),
            (re.compile(r"eyJ[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*){1,4}"), REDACTED),
        )

    def __call__(self, line: str) -> str:
        lowered = line.lower()
        for found in self._trigger.finditer(lowered):
            then = self._then.get(found.group())
            if then is None or then.match(lowered, found.end()):
                break
        else:
            return line
        for pattern, replacement in self._rules:
            line = pattern.sub(replacement, line)
        return line


class JSONFormatter(logging.Formatter):
    """Every record as one JSON object; client-controlled text is escaped by JSON itself."""

    def __init__(self, redact: CredentialRedactor | None = None) -> None:
        super().__init__()
        self._redact = redact or CredentialRedactor()
        self._second = -1
        self._second_text = ""
        # For what orjson refuses (an int beyond 64 bits): the standard library, made once.
        self._fallback = json.JSONEncoder(default=str, separators=(",", ":")).encode

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # formatted once per second, not per line
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            # orjson: several times faster than `json` (docs/BENCHMARKS.md, "Measured design choices").
            line = orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:
            line = self._fallback(entry)
        return self._redact(line)


class TextFormatter(logging.Formatter):
    """One readable line per record; an access line's fields follow as key=value pairs."""

    def __init__(self, redact: CredentialRedactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = redact or CredentialRedactor()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            # json.dumps quotes and escapes each value, so client text cannot break the line.
            line += " " + " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in fields.items())
        return self._redact(line)


def _drop_websocket_library_hint(record: logging.LogRecord) -> bool:
    # uvicorn follows "Unsupported upgrade request." with advice to install a WebSocket library;
    # the gateway turns WebSockets off on purpose, so the advice would only mislead.
    return not str(record.msg).startswith("No supported WebSocket library detected.")


def configure_logging(config: LoggingConfig, *, cookie_names: Iterable[str] = ()) -> None:
    """Every line through one handler on stderr, with `cookie_names`' values redacted too."""
    # The logging HOWTO's "Optimization" switches: no line carries thread or process names, so
    # don't compute them for every record (docs/BENCHMARKS.md, "Measured design choices").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    redact = CredentialRedactor(cookie_names)
    handler.setFormatter(JSONFormatter(redact) if config.format == "json" else TextFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[config.level])
    # httpx logs full URLs (query strings included) at INFO; those can carry secrets.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.error").addFilter(_drop_websocket_library_hint)
