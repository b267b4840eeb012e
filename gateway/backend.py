"""The former name of `gateway.backend_sdk`, kept so existing backends keep importing from it.

New code imports `gateway.backend_sdk`; everything public there is here too.
"""

from __future__ import annotations

from .backend_sdk import *  # noqa: F403
from .backend_sdk import __all__ as __all__
from .backend_sdk import header_value_of as header_value_of
