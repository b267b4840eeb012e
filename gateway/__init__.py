"""chatkit-gateway: an authenticating reverse proxy for the OpenAI ChatKit protocol."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
