"""Shared state of abuse detection: counters, lockouts, the revocation list (contract §9).

A ``StateStore`` answers one question per request, atomically: given what the
request is (``Probe``), is its client or subject locked out, is its token
revoked, and which thresholds did it just cross (``Answer``)?  Asking and
counting are one call so that a store in Redis costs one round trip per
request, and so that counting is exact at a threshold even when several
processes count at once.

``MemoryStore`` keeps the state in this process; ``RedisStore`` in Redis,
shared by every process and machine that names it.  The policy that acts on
an answer (what is denied, what is only reported) lives in ``abuse.Guard``;
a store only counts, remembers and answers.

Semantics every store implements (tests run the same cases on each):

- Keys: a client IP, a subject, a token fingerprint, a ``jti``.
- ``Probe.denial``: the reason a request is denied before the store is asked
  (``None`` when allowed so far).  The store adds ``"revoked"`` itself when
  the revocation list says so.  A denial counts towards ``denial_burst_ip``
  (key: client IP) and, when the token verified, ``denial_burst_subject``
  (key: subject), except the reasons in ``UNCOUNTED`` (our own faults, and
  ``locked_out`` itself, which would otherwise renew a lockout forever).
- Sliding windows of ``window_seconds``: the count is the number of events of
  that key whose time is greater than ``now - window_seconds``.  Crossing means
  the count reaching the threshold: with N-1 denials no alert, with the N-th
  one alert.  After an alert for a key, no alert of the same reason for the
  same key until ``window_seconds`` have passed (one alert per key and window),
  however many more requests come.
- ``token_shared``: the number of distinct client IPs that presented one
  verified token (by fingerprint) within the window reaches ``ips_per_token``.
- ``revoked_token_used``: a token denied ``revoked`` (by the list, or
  ``Probe.denial == "revoked"`` from the ``revocation_check`` hook); key: the
  fingerprint; threshold 1, one alert per window.
- Lockout (``lockout_seconds > 0`` and ``enforce_lockout``): a
  ``denial_burst_ip`` or ``denial_burst_subject`` alert also locks that IP or
  subject until ``now + lockout_seconds``; the lock ends by itself (a TTL in
  Redis).  A probe whose IP or subject is locked gets the lock's end in its
  answer and is not counted (the Guard denies it ``locked_out``); with
  ``enforce_lockout`` false the locks are still reported and set (so
  report-only shows what would happen) but the probe is counted as usual.
- Revocation: a revoked ``jti`` is revoked until the given time (the token's
  own expiry); a revoked subject revokes every token of that subject whose
  ``iat`` is before the revocation time (a token without ``iat`` too: it
  cannot show it is newer).  Revocations are kept until ``until``.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import Any

from .state_types import (
    DENIAL_BURST_IP,
    DENIAL_BURST_SUBJECT,
    NOTHING,
    REVOKED_TOKEN_USED,
    TOKEN_SHARED,
    UNCOUNTED,
    Alert,
    Answer,
    Lockout,
    Probe,
    Revocation,
    StateEvents,
    StateStore,
    Thresholds,
)

__all__ = [
    "DENIAL_BURST_IP",
    "DENIAL_BURST_SUBJECT",
    "MAX_KEYS",
    "NOTHING",
    "REVOKED",
    "REVOKED_TOKEN_USED",
    "TOKEN_SHARED",
    "UNCOUNTED",
    "Alert",
    "Answer",
    "Lockout",
    "MemoryStore",
    "Probe",
    "Revocation",
    "StateEvents",
    "StateStore",
    "Thresholds",
    "open_store",
]

REVOKED = "revoked"
_REVOKED_ONLY = Answer(revoked=True)

#: Keys each map of a ``MemoryStore`` holds at most before stale ones are swept.
MAX_KEYS = 100_000


class MemoryStore:
    """The state in this process: thread-safe (one lock), bounded, no I/O.

    A sliding window is a deque of the last N event times of a key (N: the
    threshold), so the count at the threshold is exact and a key costs at most
    N floats.  Each map holds at most ``max_keys`` keys: past that, keys whose
    window has passed are swept, then the oldest ones, so a flood of distinct
    IPs or tokens cannot grow the process without bound.
    """

    def __init__(self, *, max_keys: int = MAX_KEYS) -> None:
        self._lock = threading.Lock()
        self._max_keys = max_keys
        self._jtis: dict[str, tuple[float, float]] = {}
        self._subjects: dict[str, tuple[float, float | None]] = {}
        self._ip_locks: dict[str, float] = {}
        self._subject_locks: dict[str, float] = {}
        self._ip_denials: dict[str, deque[float]] = {}
        self._subject_denials: dict[str, deque[float]] = {}
        self._token_ips: dict[str, dict[str, float]] = {}
        self._alerted: dict[str, dict[str, float]] = {
            DENIAL_BURST_IP: {},
            DENIAL_BURST_SUBJECT: {},
            TOKEN_SHARED: {},
            REVOKED_TOKEN_USED: {},
        }

    # -- the per-request call -------------------------------------------------------

    @property
    def blocking(self) -> bool:
        """Never: memory only."""
        return False

    def probe(self, probe: Probe, thresholds: Thresholds | None) -> Answer:
        """Answer and count one request (see the module docstring)."""
        with self._lock:
            revoked = bool(self._jtis or self._subjects) and self._is_revoked(probe)
            if thresholds is None or not probe.count:
                return _REVOKED_ONLY if revoked else NOTHING
            now = probe.now
            ip = probe.client_ip
            subject = probe.subject
            ip_until = sub_until = None
            if ip is not None and self._ip_locks:
                ip_until = _in_force(self._ip_locks, ip, now)
            if subject is not None and self._subject_locks:
                sub_until = _in_force(self._subject_locks, subject, now)
            if (ip_until or sub_until) and thresholds.enforce_lockout:
                return Answer(ip_until, sub_until, revoked)
            denial = probe.denial
            fingerprint = probe.fingerprint
            if denial is None and not revoked:
                if fingerprint is not None and ip is not None:
                    seen = self._token_ips.get(fingerprint)
                    # the common case, a token again from an IP it came from: refresh only
                    if seen is None or ip not in seen or len(seen) >= thresholds.ips_per_token:
                        return self._counted(probe, thresholds, ip_until, sub_until)
                    seen[ip] = now
                if ip_until or sub_until:
                    return Answer(ip_until, sub_until)
                return NOTHING
            return self._counted(probe, thresholds, ip_until, sub_until, revoked)

    def _counted(
        self,
        probe: Probe,
        thresholds: Thresholds,
        ip_until: float | None,
        sub_until: float | None,
        revoked: bool = False,
    ) -> Answer:
        """Count a probe that has something to count (the lock is held)."""
        alerts = self._count(probe, thresholds, revoked)
        if ip_until or sub_until or revoked or alerts:
            return Answer(ip_until, sub_until, revoked, alerts)
        return NOTHING

    async def aprobe(self, probe: Probe, thresholds: Thresholds | None) -> Answer:
        """``probe()``: memory only, nothing to wait for."""
        return self.probe(probe, thresholds)

    def _is_revoked(self, probe: Probe) -> bool:
        jti = probe.jti
        if jti is not None and self._jtis:
            entry = self._jtis.get(jti)
            if entry is not None:
                if entry[1] > probe.now:
                    return True
                del self._jtis[jti]
        subject = probe.subject
        if subject is not None and self._subjects:
            found = self._subjects.get(subject)
            if found is not None:
                revoked_at, until = found
                if until is not None and until <= probe.now:
                    del self._subjects[subject]
                    return False
                issued_at = probe.issued_at
                return issued_at is None or issued_at < revoked_at
        return False

    def _count(self, probe: Probe, limits: Thresholds, revoked: bool) -> tuple[Alert, ...]:
        now = probe.now
        window = limits.window_seconds
        alerts: list[Alert] = []
        denial = probe.denial
        if denial is None and revoked:
            denial = REVOKED
        if denial is not None and denial not in UNCOUNTED:
            for reason, key, events, locks, threshold in (
                (DENIAL_BURST_IP, probe.client_ip, self._ip_denials, self._ip_locks,
                 limits.denials_per_ip),
                (DENIAL_BURST_SUBJECT, probe.subject, self._subject_denials,
                 self._subject_locks, limits.denials_per_subject),
            ):  # fmt: skip
                if key is None:
                    continue
                count = self._add_event(events, key, now, window, threshold)
                if count >= threshold and self._first_alert(reason, key, now, window):
                    until = None
                    if limits.lockout_seconds > 0:
                        until = now + limits.lockout_seconds
                        self._put(locks, key, until, now, window)
                    alerts.append(Alert(reason, key, count, until))
        fingerprint = probe.fingerprint
        if fingerprint is not None and probe.client_ip is not None:
            count = self._add_ip(fingerprint, probe.client_ip, now, window, limits.ips_per_token)
            if count >= limits.ips_per_token and self._first_alert(
                TOKEN_SHARED, fingerprint, now, window
            ):
                alerts.append(Alert(TOKEN_SHARED, fingerprint, count))
        if (
            (revoked or denial == REVOKED)
            and fingerprint is not None
            and self._first_alert(REVOKED_TOKEN_USED, fingerprint, now, window)
        ):
            alerts.append(Alert(REVOKED_TOKEN_USED, fingerprint, 1))
        return tuple(alerts)

    def _add_event(
        self, events: dict[str, deque[float]], key: str, now: float, window: int, threshold: int
    ) -> int:
        """Record one event of ``key``; the number in the window (exact up to ``threshold``)."""
        times = events.get(key)
        if times is None or times.maxlen != threshold:
            times = deque(times or (), maxlen=threshold)
            self._put(events, key, times, now, window)
        times.append(now)
        if len(times) < threshold:
            return len(times)
        cutoff = now - window
        return sum(1 for t in times if t > cutoff)

    def _add_ip(self, fingerprint: str, ip: str, now: float, window: int, threshold: int) -> int:
        """Record ``ip`` presenting ``fingerprint``; distinct IPs in the window (up to N)."""
        seen = self._token_ips.get(fingerprint)
        if seen is None:
            seen = {}
            self._put(self._token_ips, fingerprint, seen, now, window)
        seen[ip] = now
        if len(seen) < threshold:
            return len(seen)
        cutoff = now - window
        for old in [k for k, t in seen.items() if t <= cutoff]:
            del seen[old]
        if len(seen) > threshold:  # keep the N latest: enough to count up to N
            keep = sorted(seen.items(), key=lambda item: item[1])[-threshold:]
            seen.clear()
            seen.update(keep)
        return len(seen)

    def _first_alert(self, reason: str, key: str, now: float, window: int) -> bool:
        """True once per key and window: the alert of ``reason`` for ``key`` is due."""
        ends = self._alerted[reason]
        end = ends.get(key)
        if end is not None and end > now:
            return False
        self._put(ends, key, now + window, now, window)
        return True

    def _put(self, mapping: dict[str, Any], key: str, value: Any, now: float, window: int) -> None:
        """``mapping[key] = value``, sweeping when the map is full."""
        if key not in mapping and len(mapping) >= self._max_keys:
            _sweep(mapping, now - window, self._max_keys * 9 // 10)
        mapping[key] = value

    # -- administration -------------------------------------------------------------

    def revoke_jti(self, jti: str, until: float, now: float) -> None:
        """Deny the token with this ``jti`` until ``until`` (its own expiry)."""
        with self._lock:
            self._jtis[jti] = (now, until)

    def revoke_subject(self, subject: str, now: float, until: float | None) -> None:
        """Deny every token of ``subject`` issued before ``now`` (until ``until``)."""
        with self._lock:
            self._subjects[subject] = (now, until)

    def revocations(self, now: float) -> list[Revocation]:
        """The revocation list in force."""
        with self._lock:
            jtis = [
                Revocation("jti", jti, at, until)
                for jti, (at, until) in self._jtis.items()
                if until > now
            ]
            subjects = [
                Revocation("subject", subject, at, until)
                for subject, (at, until) in self._subjects.items()
                if until is None or until > now
            ]
        return jtis + subjects

    def lockouts(self, now: float) -> list[Lockout]:
        """The lockouts in force."""
        with self._lock:
            return [
                Lockout(kind, value, until)
                for kind, locks in (("ip", self._ip_locks), ("subject", self._subject_locks))
                for value, until in locks.items()
                if until > now
            ]

    def clear_lockout(self, kind: str, value: str) -> bool:
        """End one lockout early (and forget the key's count); false when there was none."""
        locks, events, reason = self._lock_maps(kind)
        with self._lock:
            events.pop(value, None)
            self._alerted[reason].pop(value, None)
            return locks.pop(value, None) is not None

    def clear_lockouts(self) -> int:
        """End every lockout (and forget the counts of the keys locked); how many there were."""
        with self._lock:
            cleared = 0
            for kind in ("ip", "subject"):
                locks, events, reason = self._lock_maps(kind)
                for value in locks:
                    events.pop(value, None)
                    self._alerted[reason].pop(value, None)
                cleared += len(locks)
                locks.clear()
            return cleared

    def _lock_maps(self, kind: str) -> tuple[dict[str, float], dict[str, deque[float]], str]:
        if kind == "ip":
            return self._ip_locks, self._ip_denials, DENIAL_BURST_IP
        if kind == "subject":
            return self._subject_locks, self._subject_denials, DENIAL_BURST_SUBJECT
        raise ValueError(f"unknown lockout kind {kind!r} (kinds: ip, subject)")

    def close(self) -> None:
        """Nothing to release."""


def _in_force(locks: dict[str, float], key: str, now: float) -> float | None:
    """The end of ``key``'s lock if it is still in force (an ended one is dropped)."""
    until = locks.get(key)
    if until is None:
        return None
    if until > now:
        return until
    del locks[key]
    return None


def _latest(value: object) -> float:
    """The last time a map value was touched (for sweeping)."""
    if isinstance(value, float | int):
        return float(value)
    if isinstance(value, deque):
        return float(value[-1]) if value else float("-inf")
    if isinstance(value, dict):
        return max(value.values(), default=float("-inf"))
    return float("-inf")


def _sweep(mapping: dict[str, Any], cutoff: float, target: int) -> None:
    """Drop keys not touched since ``cutoff``, then the oldest, down to ``target`` keys."""
    for key in [k for k, v in mapping.items() if _latest(v) <= cutoff]:
        del mapping[key]
    excess = len(mapping) - target
    if excess > 0:
        for key in list(itertools.islice(mapping, excess)):
            del mapping[key]


def open_store(
    url: str | None, events: StateEvents | None = None, *, timeout: float | None = None
) -> StateStore:
    """The store ``state_url`` names: process memory for ``None``, else Redis.

    A Redis store falls back to process memory while Redis is unreachable or
    misses its deadline (``timeout`` seconds per probe, default
    ``state_redis.PROBE_TIMEOUT``); ``events`` receives one ``state_event`` when it
    is lost and one when it is back.  redis-py is imported only for a URL.
    """
    if url is None:
        return MemoryStore()
    from .state_redis import (  # noqa: PLC0415 - optional extra
        PROBE_TIMEOUT,
        FailoverStore,
        RedisStore,
    )

    redis_store = RedisStore(url, timeout=PROBE_TIMEOUT if timeout is None else timeout)
    return FailoverStore(redis_store, MemoryStore(), events)
