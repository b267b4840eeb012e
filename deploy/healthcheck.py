"""The container's HEALTHCHECK: exit 0 when the gateway's /healthz answers 200, else 1.

The slim image has no curl. The port is the gateway's own `server.port`, read from the same
config file and environment overrides `chatkit-gateway serve` reads, so changing the port does not
break the check. Proxies from the environment are ignored: this only ever talks to 127.0.0.1.
"""

from __future__ import annotations

import sys
import urllib.request

from gateway.config import ConfigError, load_config


def main() -> int:
    try:
        port = load_config().server.port
    except ConfigError as exc:
        print(f"healthcheck: configuration error: {exc}", file=sys.stderr)
        return 1
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # URLError, HTTPError (non-2xx), timeouts
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
