"""`make demo`, until the embedded demo lands: the gateway in front of a real ChatKit backend.

Starts the test ChatKit backend (a real `ChatKitServer` with an echo assistant) and the gateway in
front of it, both on 127.0.0.1, prints how to talk to it, and stops both on Ctrl-C.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fixtures import start_backend  # noqa: E402
from tests.support.gateway import gateway_config, start_gateway  # noqa: E402

GATEWAY_PORT = 8000


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with start_backend(delay=0.15) as backend, start_gateway(gateway_config(backend.url), port=GATEWAY_PORT) as gw:
        print(f"chatkit-gateway on {gw.url}  ->  ChatKit backend on {backend.url}")
        print("Try a streamed reply (Ctrl-C to stop):")
        print(
            f"  curl -N {gw.chatkit_url} -H 'content-type: application/json' -d "
            """'{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"hello there"}],"""
            """"attachments":[],"inference_options":{}}}}'"""
        )
        try:
            while gw.process.poll() is None and backend.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
