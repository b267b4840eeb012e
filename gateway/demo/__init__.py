"""`chatkit-gateway demo`: the whole product on one machine, with nothing to configure.

One process runs a development identity provider (`idp.py`), a real ChatKit backend built on
`gateway.backend_sdk` (`backend.py`, `store.py`), and the gateway in front of both, configured as in
production, behind one origin that also serves the demo page (`page.py`, `static/`). `server.py`
starts and stops the three servers. Needs the `demo` extra (`openai-chatkit`).
"""

from __future__ import annotations

from .server import run_demo

__all__ = ["run_demo"]
