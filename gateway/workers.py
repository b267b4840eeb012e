"""`server.workers = N`: N worker processes serving one listening socket, and their supervisor.

One process runs one core. With `server.workers` above 1 the process that starts becomes a
supervisor that serves nothing itself:

- it binds and listens on `server.host:server.port` once, then forks the workers, which inherit
  that socket. The kernel queues connections on it until a worker accepts them, and a worker
  accepts only once its lifespan start-up is complete (keys loaded, upstream and request path
  warmed): uvicorn starts listening after the lifespan, so no connection reaches a cold worker;
- `SIGTERM` is passed to every worker, and each runs the gateway's drain (`server.py`) at the
  same moment: `/readyz` 503, the shutdown grace, then open streams ended with the error event.
  The supervisor exits when they all have (0 when they all exited 0). `SIGINT` stops them at once;
- a worker that dies after it was ready is logged and replaced (its connections are lost, the
  others' are untouched); one that dies before it was ever ready, or `MAX_RESTARTS` deaths within
  `RESTART_WINDOW_SECONDS`, stops the whole gateway with exit status 1, since a worker that cannot
  start would fail the same way again;
- a worker whose supervisor disappears (`kill -9`) gets `SIGTERM` from the kernel and drains
  (Linux `PR_SET_PDEATHSIG`), so no orphan keeps serving.

Everything a worker keeps in memory is its own: a per-process store where sharing matters makes
start-up refuse `workers > 1` (`config.py`, `per_process_stores`). The metrics are the exception:
the supervisor makes a temporary directory where every worker keeps its metric values in files
(`observe.share_metrics`), so `/metrics`, whichever worker takes the scrape, answers for all of
them: counters and histograms summed (a replaced worker's counts included), open streams those of
the live workers. The directory is removed when the supervisor exits (docs/operations.md,
"Several workers").
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import multiprocess

from .allocator import purge_after_fork
from .config import GatewayConfig

__all__ = ["Supervisor", "listening_socket", "run_workers"]

logger = logging.getLogger("chatkit_gateway")

MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
POLL_SECONDS = 0.1
BACKLOG = 4096  # as uvicorn_config's, for the one socket every worker accepts from
PR_SET_PDEATHSIG = 1  # linux/prctl.h
READY = b"r"


def listening_socket(host: str, port: int) -> socket.socket:
    """The socket every worker accepts from, listening before any worker is ready, so connections
    made during start-up wait in its queue rather than being refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """Linux: SIGTERM (the drain) to this worker when the supervisor dies, even by `kill -9`."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Worker:
    index: int
    pid: int
    ready_pipe: int
    ready: bool = False


@dataclass
class Supervisor:
    """Forks, watches and stops the workers (see the module docstring)."""

    config: GatewayConfig
    sock: socket.socket
    count: int
    metrics_dir: str
    workers: dict[int, Worker] = field(default_factory=dict)
    deaths: deque[float] = field(default_factory=deque)
    stopping: bool = False
    failed: bool = False
    _signals: list[int] = field(default_factory=list)
    _selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, frame: self._signals.append(number))
        logger.info("supervisor %d starting %d workers on %s", os.getpid(), self.count, self._address())
        for index in range(self.count):
            self._spawn(index)
        statuses: list[int] = []
        while self.workers:
            self._handle_signals()
            self._read_ready()
            statuses += self._reap()
        self.sock.close()
        if self.failed:
            logger.error("gateway stopped: a worker could not be kept running")
            return 1
        return 0 if all(status == 0 for status in statuses) else 1

    def _address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def _spawn(self, index: int) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_end)
            self._selector.close()
            for other in self.workers.values():
                os.close(other.ready_pipe)
            _run_worker(self.config, self.sock, write_end, self.metrics_dir)  # never returns
        os.close(write_end)
        os.set_blocking(read_end, False)
        self.workers[pid] = Worker(index, pid, read_end)
        self._selector.register(read_end, selectors.EVENT_READ, pid)

    def _read_ready(self) -> None:
        for key, _ in self._selector.select(POLL_SECONDS):
            worker = self.workers.get(key.data)
            with contextlib.suppress(BlockingIOError):
                data = os.read(key.fd, 16)
                if worker is not None and READY in data and not worker.ready:
                    worker.ready = True
                    logger.info("worker %d (pid %d) ready", worker.index, worker.pid)
                if not data:  # the worker closed its end: it is exiting
                    self._selector.unregister(key.fd)

    def _reap(self) -> list[int]:
        statuses = []
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.ready_pipe)
            os.close(worker.ready_pipe)
            # Its open streams are gone with it.
            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            code = os.waitstatus_to_exitcode(status)
            statuses.append(code)
            if not self.stopping:
                self._replace(worker, code)
        return statuses

    def _replace(self, worker: Worker, code: int) -> None:
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > RESTART_WINDOW_SECONDS:
            self.deaths.popleft()
        if not worker.ready:
            logger.error("worker %d (pid %d) exited with %d before ready; stopping", worker.index, worker.pid, code)
            self._give_up()
        elif len(self.deaths) > MAX_RESTARTS:
            logger.error("%d workers died within %g s; stopping", len(self.deaths), RESTART_WINDOW_SECONDS)
            self._give_up()
        else:
            logger.error("worker %d (pid %d) exited with %d; starting a replacement", worker.index, worker.pid, code)
            self._spawn(worker.index)

    def _give_up(self) -> None:
        self.failed = True
        self._stop(signal.SIGTERM)

    def _handle_signals(self) -> None:
        while self._signals:
            self._stop(self._signals.pop(0))

    def _stop(self, sig: int) -> None:
        """Pass `sig` on to every worker: SIGTERM drains (a second one stops at once), SIGINT stops."""
        if not self.stopping:
            logger.info("supervisor: %s, stopping %d workers", signal.Signals(sig).name, len(self.workers))
        self.stopping = True
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _run_worker(config: GatewayConfig, sock: socket.socket, ready_pipe: int, metrics_dir: str) -> None:
    """The forked worker: serve on the inherited socket, say when ready, exit with the outcome."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent()
        if os.getppid() == 1:  # the supervisor died before the line above
            os._exit(1)
        purge_after_fork()
        # The app's modules: the supervisor never needs them.
        from .observe import share_metrics
        from .server import GatewayServer

        share_metrics(metrics_dir)  # before the app makes its metrics

        server = GatewayServer(config, on_ready=lambda: os.write(ready_pipe, READY))
        server.run(sockets=[sock])
        code = 0 if server.started else 1
    except KeyboardInterrupt:
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        logger.exception("worker failed")
    finally:
        logging.shutdown()
        os._exit(code)


def run_workers(config: GatewayConfig) -> int:
    try:
        sock = listening_socket(config.server.host, config.server.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", config.server.host, config.server.port, exc.strerror or exc)
        return 1
    metrics_dir = tempfile.mkdtemp(prefix="chatkit-gateway-metrics-")
    try:
        return Supervisor(config, sock, config.server.workers, metrics_dir).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
