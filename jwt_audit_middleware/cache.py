"""The verified-token cache: repeated tokens cost a hash and a dict look-up.

Keyed by the SHA-256 digest of the token (the token text itself is never kept).
Only successful verifications are cached, so a cached entry can never make a
valid token fail.  An entry lives ``ttl`` seconds by the monotonic clock (a
wall clock that steps cannot stretch or shorten it) and is dropped whenever the
key ring it was verified with is replaced.  Each entry also keeps the span of
wall-clock time in which its token's ``nbf``/``iat`` and ``exp`` (with leeway)
hold, and a hit outside that span is a miss: after the clock steps back, a
token whose ``nbf`` now lies in the future is checked again in full.  The
revocation hook and path scopes still run per request.  Bounded, least
recently used out first, safe under threads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from time import perf_counter

from .model import Verdict

DEFAULT_TTL = 300.0

#: deadline (monotonic), key-ring version, valid from, valid until (wall clock), verdict
_Entry = tuple[float, int, float, float, Verdict]


class TokenCache:
    """A bounded LRU map: token digest -> an allowed ``Verdict`` and when it holds.

    Reads take no lock: a ``dict.get`` and an ``OrderedDict.move_to_end`` are
    single C calls under the GIL.  Writes and evictions hold the lock.
    """

    __slots__ = ("_entries", "_lock", "_monotonic", "hits", "misses", "size", "ttl")

    def __init__(
        self,
        size: int,
        ttl: float = DEFAULT_TTL,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self._monotonic = monotonic
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, digest: bytes, now: float, ring: int) -> Verdict | None:
        """The cached verdict for ``digest`` at wall-clock ``now``, unless stale or absent."""
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        deadline, entry_ring, valid_from, valid_until, verdict = entry
        if (
            entry_ring != ring
            or not valid_from <= now < valid_until
            or self._monotonic() >= deadline
        ):
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

    def put(
        self, digest: bytes, verdict: Verdict, ring: int, valid_from: float, valid_until: float
    ) -> None:
        """Remember ``verdict`` for ``ttl`` seconds, for wall-clock times in its span."""
        entry = (self._monotonic() + self.ttl, ring, valid_from, valid_until, verdict)
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (e.g. after a key rotation)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class ObservedTokenCache(TokenCache):
    """A ``TokenCache`` that times each hit for ``jwt_audit_verify_seconds{cache="hit"}``.

    ``observe_hit(seconds)`` (``metrics.py`` sets it) is called once per hit,
    with the look-up's own time, so the histogram's ``hit`` count and
    ``hits`` agree; misses are the verifier's to time.
    """

    __slots__ = ("observe_hit",)

    def __init__(
        self,
        size: int,
        ttl: float = DEFAULT_TTL,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(size, ttl, monotonic=monotonic)
        self.observe_hit: Callable[[float], object] | None = None

    @classmethod
    def like(cls, cache: TokenCache) -> ObservedTokenCache:
        """An observed cache with ``cache``'s size, lifetime, clock, entries and counts."""
        observed = cls(cache.size, cache.ttl, monotonic=cache._monotonic)
        with cache._lock:
            observed._entries.update(cache._entries)
        observed.hits, observed.misses = cache.hits, cache.misses
        return observed

    def get(self, digest: bytes, now: float, ring: int) -> Verdict | None:
        """``TokenCache.get()``; a hit is timed and observed."""
        start = perf_counter()
        verdict = TokenCache.get(self, digest, now, ring)
        if verdict is not None:
            observe = self.observe_hit
            if observe is not None:
                observe(perf_counter() - start)
        return verdict
