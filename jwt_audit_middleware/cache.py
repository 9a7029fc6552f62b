"""The verified-token cache: repeated tokens cost a hash and a dict look-up.

Keyed by the SHA-256 digest of the token (the token text itself is never kept).
Only successful verifications are cached, so a cached entry can never make a
valid token fail; an entry is dropped at the earlier of the token's ``exp`` and
``ttl`` seconds, and whenever the key ring it was verified with is replaced.
A hit is still checked against the clock by the caller, and the revocation hook
and path scopes still run per request.  Bounded, least recently used out first,
safe under threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .policy import Verdict

DEFAULT_TTL = 300.0


class TokenCache:
    """A bounded LRU map: token digest -> (deadline, key-ring id, allowed Verdict).

    Reads take no lock: a ``dict.get`` and an ``OrderedDict.move_to_end`` are
    single C calls under the GIL.  Writes and evictions hold the lock.
    """

    __slots__ = ("_entries", "_lock", "hits", "misses", "size", "ttl")

    def __init__(self, size: int, ttl: float = DEFAULT_TTL) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[bytes, tuple[float, int, Verdict]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, digest: bytes, now: float, ring: int) -> Verdict | None:
        """The cached verdict for ``digest``, unless it is stale or absent."""
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        deadline, entry_ring, verdict = entry
        if now >= deadline or entry_ring != ring:
            with self._lock:
                self._entries.pop(digest, None)
            self.misses += 1
            return None
        try:  # noqa: SIM105 - suppress() costs more on this path
            self._entries.move_to_end(digest)
        except KeyError:  # evicted by another thread meanwhile: still a valid answer
            pass
        self.hits += 1
        return verdict

    def put(self, digest: bytes, verdict: Verdict, deadline: float, ring: int) -> None:
        """Remember ``verdict`` until ``deadline`` (the caller bounds it by ``exp``)."""
        with self._lock:
            self._entries[digest] = (deadline, ring, verdict)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (e.g. after a key rotation)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
