"""Log lines: JSON (one object per line) or text, never a credential."""

from __future__ import annotations

import json
import logging
import sys
import time

import orjson

from .config import LoggingConfig

__all__ = ["JSONFormatter", "TextFormatter", "configure_logging"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class JSONFormatter(logging.Formatter):
    """Every record as one JSON object; client-controlled text is escaped by JSON itself."""

    def __init__(self) -> None:
        super().__init__()
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
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:
            return self._fallback(entry)


class TextFormatter(logging.Formatter):
    """One readable line per record; an access line's fields follow as key=value pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            # json.dumps quotes and escapes each value, so client text cannot break the line.
            line += " " + " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in fields.items())
        return line


def configure_logging(config: LoggingConfig) -> None:
    # The logging HOWTO's "Optimization" switches: no line carries thread or process names, so
    # don't compute them for every record (docs/BENCHMARKS.md, "Measured design choices").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[config.level])
    # httpx logs full URLs (query strings included) at INFO; those can carry secrets.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
