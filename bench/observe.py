"""What observing a request costs: its log line and metric updates (`Observer.finish`), in-process.

The JSON access log is formatted and written to /dev/null through the gateway's own handler setup,
and every metric a request touches is updated; the figure is compared in the report with the
gateway's whole CPU cost per request measured under load.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from gateway.config import LoggingConfig
from gateway.logs import JSONFormatter, configure_logging
from gateway.observe import Exchange, Observer


@dataclass(frozen=True)
class ObserveFigures:
    us_per_request: float
    samples: int


def run(samples: int = 20_000) -> ObserveFigures:
    configure_logging(LoggingConfig())  # the gateway's logging set-up, then a /dev/null sink
    observer = Observer()
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("chatkit_gateway.access")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        started = time.perf_counter_ns()
        for n in range(samples):
            exchange = Exchange(f"req-{n}", "chatkit", time.monotonic(), "POST")
            exchange.set_op("threads.list")
            exchange.user_id, exchange.source = "bench-user", "bearer"
            exchange.status = exchange.upstream_status = 200
            exchange.ttfb, exchange.bytes_in, exchange.bytes_out = 0.0004, 120, 320
            observer.finish(exchange)
        elapsed = time.perf_counter_ns() - started
    finally:
        logger.handlers[:], level, logger.propagate = saved[0], saved[1], saved[2]
        logger.setLevel(level)
        sink.close()
    return ObserveFigures(elapsed / samples / 1000, samples)


if __name__ == "__main__":
    figures = run()
    print(f"log line + metrics: {figures.us_per_request:.1f} µs per request")
