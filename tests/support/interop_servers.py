"""The conformance backend (`tests/support/interop.py`) under each server, as a subprocess on loopback.

`running_server(name)` starts one of `SERVERS` and yields its base URL; `nginx` runs in front of
uvicorn (with `client_max_body_size` small enough to refuse an upload itself, early).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.support.nginx import serve_nginx_config
from tests.support.procs import ProcessStartError, free_port, start_process, stop_process

__all__ = ["SERVERS", "running_server"]

APP = "tests.support.interop:app"
PY = sys.executable

COMMANDS: dict[str, Callable[[str], list[str]]] = {
    "uvicorn-h11": lambda port: [PY, "-m", "uvicorn", APP, "--http", "h11", "--port", port, "--log-level", "warning"],
    "uvicorn-httptools": lambda port: [
        *[PY, "-m", "uvicorn", APP, "--http", "httptools", "--port", port, "--log-level", "warning"]
    ],
    "hypercorn": lambda port: [PY, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}"],
    "granian": lambda port: [
        *[PY, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", port, "--workers", "1", APP]
    ],
    "daphne": lambda port: [PY, "-m", "daphne", "-b", "127.0.0.1", "-p", port, APP],
    "aiohttp": lambda port: [PY, "-m", "tests.support.interop", "aiohttp", port],
    "wsgiref": lambda port: [PY, "-m", "tests.support.interop", "wsgiref", port],
    "node": lambda port: [shutil.which("node") or "node", "tests/support/interop.js", port],
}
SERVERS = [*COMMANDS, "nginx"]

NGINX_IN_FRONT = """\
server {
    listen {{LISTEN}};
    client_max_body_size 1k;
    location / {
        proxy_pass http://{{APP}};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
    }
}
"""


@contextmanager
def _process(name: str) -> Iterator[str]:
    port = str(free_port())
    url = f"http://127.0.0.1:{port}"
    proc = start_process(COMMANDS[name](port), ready_url=f"{url}/ready", timeout=30)
    try:
        yield url
    finally:
        stop_process(proc)


@contextmanager
def running_server(name: str) -> Iterator[str]:
    if name == "node" and shutil.which("node") is None:
        raise ProcessStartError("node is not installed")
    if name != "nginx":
        with _process(name) as url:
            yield url
        return
    with (
        _process("uvicorn-httptools") as app,
        serve_nginx_config(NGINX_IN_FRONT, APP=app.removeprefix("http://")) as nginx,
    ):
        yield nginx.url
