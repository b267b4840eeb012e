"""Thread and attachment ownership: a signed-in user can act only on their own threads.

`OwnershipPolicy` (`policy.py`) checks the ids a request names and learns owners from answers;
`Owners` (`owners.py`) caches the records of an `OwnerStore` (`store.py`: SQLite, Redis, memory).
"""

from __future__ import annotations

from .owners import Owners
from .policy import AnswerPlan, OwnershipPolicy, named_ids
from .store import OwnerStore, StoreUnavailable, open_store
from .stream import ThreadCreatedWatch

__all__ = [
    "AnswerPlan",
    "OwnerStore",
    "Owners",
    "OwnershipPolicy",
    "StoreUnavailable",
    "ThreadCreatedWatch",
    "named_ids",
    "open_store",
]
