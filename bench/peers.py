"""The processes a benchmark run starts, all on 127.0.0.1, each stopped by PID when the run ends.

- the fast upstream (`bench.upstream`);
- a static JWKS (`python -m http.server` over a folder holding `jwks.json`), so the gateway
  verifies real RS256 tokens;
- the gateway as users run it (`chatkit-gateway serve`, auth on, metadata injection on);
- nginx with `proxy_buffering off`, one worker: the proxy a user would pick instead.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway import allocator

ROOT = Path(__file__).resolve().parents[1]
ISSUER = "https://idp.bench.invalid"
AUDIENCE = "chatkit"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


FD_LIMIT = 65536


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        # Two fds per relayed stream: 10,000 streams need more than 20,000. Root may raise the hard
        # limit on most machines; where it cannot, the hard one it is (`storm.max_streams_per_worker`).
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, FD_LIMIT), max(hard, FD_LIMIT)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Peer:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pids(self) -> list[int]:
        """The process and its children (nginx's workers), for CPU, memory and fd accounting."""
        pids = [self.process.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.process.pid:
                    pids.append(int(entry.name))
        return pids


def start(
    name: str,
    args: Sequence[str],
    url: str,
    ready_path: str,
    *,
    timeout: float = 30.0,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
) -> Peer:
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_raise_fd_limit,
        )
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url + ready_path, trust_env=False, timeout=1).status_code < 500:
                return Peer(name, url, process, log)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop(Peer(name, url, process, log))
            raise RuntimeError(f"{name} not ready after {timeout} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def gateway_env(extra: Mapping[str, str] | None = None, *, jemalloc: bool = True) -> dict[str, str]:
    """The environment a measured gateway starts with: this process's, with the container image's
    allocator (jemalloc: `gateway/allocator.py`), so that the figures are the image's; without it
    when `jemalloc` is false (Python's own allocator, for the rows that show the difference)."""
    env = {k: v for k, v in os.environ.items() if k not in allocator.ENVIRONMENT}
    if jemalloc:
        library = allocator.find_jemalloc()
        if library is None:
            raise RuntimeError("libjemalloc2 is missing (scripts/system-deps.sh installs it): the image runs on it")
        env.update(allocator.jemalloc_environment(library))
    return {**env, **(extra or {})}


def stop(peer: Peer) -> None:
    if peer.process.poll() is None:
        peer.process.send_signal(signal.SIGTERM)
        try:
            peer.process.wait(10)
        except subprocess.TimeoutExpired:
            peer.process.kill()
            peer.process.wait()
    peer.log.unlink(missing_ok=True)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An RSA key, its JWKS, and tokens for the benchmark's users."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.jwks = {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": "bench",
                    "use": "sig",
                    "alg": "RS256",
                    "n": _b64(numbers.n.to_bytes(256, "big")),
                    "e": _b64(numbers.e.to_bytes(3, "big")),
                }
            ]
        }

    def token(self, sub: str = "bench-user") -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "name": "Bench", "iat": now, "exp": now + 7200}
        header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
        signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"


def gateway_config(port: int, upstream_url: str, jwks_url: str, folder: Path) -> dict[str, Any]:
    """The gateway's configuration as the benchmarks run it: auth on, ownership on its default
    store (SQLite, in `folder`), warnings only in the log."""
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "upstream": {"url": f"{upstream_url}/chatkit"},
        "auth": {"issuers": [{"issuer": ISSUER, "jwks_url": f"{jwks_url}/jwks.json", "audiences": [AUDIENCE]}]},
        "logging": {"level": "warning"},
        "ownership": {"sqlite_path": str(folder / "ownership.sqlite3")},
    }


def start_jwks_and_upstream(folder: Path, signer: Signer, started: list[Peer]) -> tuple[Peer, Peer]:
    """The JWKS server (`signer`'s keys, served from `folder`) and the bench upstream, each added
    to `started` as it is up, so the caller stops them with the rest."""
    (folder / "jwks.json").write_text(json.dumps(signer.jwks))
    jwks_port, up_port = free_port(), free_port()
    jwks = start(
        "jwks",
        [sys.executable, "-m", "http.server", str(jwks_port), "--bind", "127.0.0.1", "--directory", str(folder)],
        f"http://127.0.0.1:{jwks_port}",
        "/jwks.json",
    )
    started.append(jwks)
    upstream = start(
        "upstream",
        [sys.executable, "-m", "bench.upstream", "--port", str(up_port)],
        f"http://127.0.0.1:{up_port}",
        "/",
    )
    started.append(upstream)
    return jwks, upstream


@contextmanager
def stopped_after() -> Iterator[list[Peer]]:
    """A list to add each started peer to; every one of them stopped, last first, on the way out."""
    started: list[Peer] = []
    try:
        yield started
    finally:
        for peer in reversed(started):
            stop(peer)


@contextmanager
def peers(
    with_nginx: bool = True, gateway_command: Sequence[str] = (sys.executable, "-m", "gateway")
) -> Iterator[tuple[Peer, Peer, Peer | None, Signer]]:
    """Upstream, gateway and (optionally) nginx, started in that order and stopped in reverse.

    `gateway_command` runs the gateway's CLI (a profiler may wrap it: bench/profile.py)."""
    signer = Signer()
    with tempfile.TemporaryDirectory(prefix="chatkit-gateway-bench-") as folder:
        root = Path(folder)
        with stopped_after() as started:
            jwks, upstream = start_jwks_and_upstream(root, signer, started)
            gw_port = free_port()
            config = gateway_config(gw_port, upstream.url, jwks.url, root)
            (root / "gateway.toml").write_text(tomli_w.dumps(config))
            gateway = start(
                "gateway",
                [*gateway_command, "serve", "--config", str(root / "gateway.toml")],
                f"http://127.0.0.1:{gw_port}",
                "/readyz",
                env=gateway_env(),
            )
            started.append(gateway)
            # The thread the upstream lists is the bench user's (ownership is on, as by default):
            # presented once, it is recorded for them (`unknown = "claim"`).
            httpx.post(
                f"{gateway.url}/chatkit",
                json={"type": "threads.get_by_id", "params": {"thread_id": "thr_bench"}},
                headers={"authorization": f"Bearer {signer.token()}"},
                trust_env=False,
            ).raise_for_status()
            nginx = None
            if with_nginx and os.path.exists(NGINX):
                nginx = start_nginx(root, upstream)
                started.append(nginx)
            yield upstream, gateway, nginx, signer


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
    upstream chatkit {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=8192;
        location / {{
            proxy_pass http://chatkit;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(root: Path, upstream: Peer) -> Peer:
    port = free_port()
    conf = root / "nginx.conf"
    # Two connections per relayed stream: as many as the fd limit lets one worker hold.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 65536)
    conf.write_text(
        NGINX_CONF.format(
            root=root,
            upstream=upstream.url.removeprefix("http://"),
            port=port,
            nofile=nofile,
            connections=nofile,
        )
    )
    return start(
        "nginx",
        [NGINX, "-c", str(conf), "-p", str(root), "-e", str(root / "nginx-error.log")],
        f"http://127.0.0.1:{port}",
        "/",
    )
