"""A real nginx (the Debian package) for the tests, serving one of the documented snippets verbatim.

`start_nginx(snippet, GATEWAY=..., APP=...)` fills the `{{NAME}}` placeholders of a file under
`deploy/nginx/` (`serve_nginx_config` takes a test's own snippet instead), includes it unchanged in
a minimal main configuration (one process, a temporary prefix, logs and temp files inside it),
starts `nginx` on a free loopback port and stops it by its PID. `echo_app()` is the protected
application of the forward-auth snippet: it answers every request with the method, path, headers
(as a list of pairs, so duplicates show) and body it got.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.procs import PROJECT_ROOT, ProcessStartError, free_port, stop_process

NGINX_SNIPPETS = PROJECT_ROOT / "deploy" / "nginx"
READY_TIMEOUT_SECONDS = 10.0
PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")

MAIN_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/snippet.conf;
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise ProcessStartError("nginx is not installed (`make test` installs it via scripts/system-deps.sh)")
    return found


def fill_placeholders(text: str, values: dict[str, str]) -> str:
    """`text` with every `{{NAME}}` replaced; a placeholder without a value is an error."""
    missing = set(PLACEHOLDER.findall(text)) - set(values)
    if missing:
        raise KeyError(f"no value for placeholders {sorted(missing)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


@dataclass(frozen=True)
class RunningNginx:
    url: str
    port: int
    root: Path

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def start_nginx(snippet: str, **values: str) -> Iterator[RunningNginx]:
    """nginx serving `deploy/nginx/<snippet>` with its placeholders filled; LISTEN is chosen here."""
    with serve_nginx_config((NGINX_SNIPPETS / snippet).read_text(encoding="utf-8"), **values) as running:
        yield running


@contextmanager
def serve_nginx_config(snippet_text: str, **values: str) -> Iterator[RunningNginx]:
    """nginx serving `snippet_text` (an `http`-level snippet) with its placeholders filled, as `start_nginx`."""
    port = free_port()
    text = fill_placeholders(snippet_text, {"LISTEN": f"127.0.0.1:{port}", **values})
    with tempfile.TemporaryDirectory(prefix="chatkit-gateway-nginx-") as folder:
        root = Path(folder)
        (root / "snippet.conf").write_text(text, encoding="utf-8")
        (root / "nginx.conf").write_text(MAIN_CONF.format(root=root), encoding="utf-8")
        args = [nginx_binary(), "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")]
        with open(root / "stdout.log", "wb") as out:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        running = RunningNginx(url=f"http://127.0.0.1:{port}", port=port, root=root)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while not _listening(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = (root / "stdout.log").read_text(encoding="utf-8", errors="replace")
                    raise ProcessStartError(f"nginx did not start:\n{output}\n{running.error_log()}")
                time.sleep(0.05)
            yield running
        finally:
            stop_process(proc)


@dataclass
class EchoApp:
    """The app behind forward-auth: what each request looked like when it arrived."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)

    def header_values(self, request: dict[str, Any], name: str) -> list[str]:
        return [value for key, value in request["headers"] if key.lower() == name.lower()]


@contextmanager
def echo_app() -> Iterator[EchoApp]:
    app = EchoApp(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _echo(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
            seen = {"method": self.command, "path": self.path, "headers": list(self.headers.items()), "body": body}
            app.requests.append(seen)
            payload = json.dumps(seen).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _echo

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    app.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
