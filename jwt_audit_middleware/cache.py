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
    from .verifier import VerifiedToken

DEFAULT_TTL = 300.0


class TokenCache:
    """A bounded LRU map: token digest -> (deadline, key-ring id, VerifiedToken)."""

    __slots__ = ("_entries", "_lock", "hits", "misses", "size", "ttl")

    def __init__(self, size: int, ttl: float = DEFAULT_TTL) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[bytes, tuple[float, int, VerifiedToken]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, digest: bytes, now: float, ring: int) -> VerifiedToken | None:
        """The cached token for ``digest``, unless it is stale or absent."""
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        deadline, entry_ring, token = entry
        if now >= deadline or entry_ring != ring:
            with self._lock:
                self._entries.pop(digest, None)
            self.misses += 1
            return None
        with self._lock:
            if digest in self._entries:
                self._entries.move_to_end(digest)
        self.hits += 1
        return token

    def put(self, digest: bytes, token: VerifiedToken, deadline: float, ring: int) -> None:
        """Remember ``token`` until ``deadline`` (the caller bounds it by ``exp``)."""
        with self._lock:
            self._entries[digest] = (deadline, ring, token)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (e.g. after a key rotation)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
