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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: Receives a ``state_event`` dict (``event="state_event"``, ``outcome`` ``store_lost``
#: or ``store_restored``, ``reason``, ``detail``): the Guard emits it on ``jwt_audit``.
StateEvents = Callable[[dict[str, Any]], None]

#: Denial reasons that do not count towards a burst: our faults, and the lockout itself.
UNCOUNTED = frozenset({"internal_error", "key_unavailable", "locked_out"})

#: Alert reasons (contract §9).
DENIAL_BURST_IP = "denial_burst_ip"
DENIAL_BURST_SUBJECT = "denial_burst_subject"
TOKEN_SHARED = "token_shared"  # noqa: S105 - a reason code, not a secret
REVOKED_TOKEN_USED = "revoked_token_used"  # noqa: S105 - a reason code


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What the store counts against (``Settings.abuse``; ``None`` fields: not counted)."""

    window_seconds: int
    denials_per_ip: int
    denials_per_subject: int
    ips_per_token: int
    lockout_seconds: int
    enforce_lockout: bool = True


@dataclass(slots=True)
class Probe:
    """One request as the store sees it.

    ``subject``, ``jti``, ``issued_at`` and ``fingerprint`` come from a token
    whose signature verified, never from an unverified one (``None`` otherwise).
    ``count`` is false when detection is off: the store then only answers the
    revocation list (and never writes).  Not frozen: one is made per request,
    and a frozen dataclass pays a generic attribute set per field.
    """

    now: float
    client_ip: str | None
    subject: str | None = None
    jti: str | None = None
    issued_at: float | None = None
    fingerprint: str | None = None
    denial: str | None = None
    count: bool = True


@dataclass(frozen=True, slots=True)
class Alert:
    """A threshold crossed: one per key and window."""

    reason: str
    """``denial_burst_ip``, ``denial_burst_subject``, ``token_shared``, ``revoked_token_used``."""
    key: str
    """The client IP, subject or token fingerprint the alert is about."""
    count: int
    locked_until: float | None = None
    """Set when the alert also locked the key out."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the store says about one ``Probe``."""

    ip_locked_until: float | None = None
    subject_locked_until: float | None = None
    revoked: bool = False
    alerts: tuple[Alert, ...] = ()


NOTHING = Answer()


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry of the revocation list."""

    kind: str  # "jti" or "subject"
    value: str
    revoked_at: float
    until: float | None


@dataclass(frozen=True, slots=True)
class Lockout:
    """One lockout in force."""

    kind: str  # "ip" or "subject"
    value: str
    until: float


class StateStore(Protocol):
    """Counters, lockouts and the revocation list, in this process or shared."""

    def probe(self, probe: Probe, thresholds: Thresholds | None) -> Answer:
        """Answer and count one request, atomically (blocking; WSGI, threads)."""

    async def aprobe(self, probe: Probe, thresholds: Thresholds | None) -> Answer:
        """``probe()`` from an event loop, never blocking it."""

    def revoke_jti(self, jti: str, until: float, now: float) -> None:
        """Deny the token with this ``jti`` until ``until`` (its own expiry)."""

    def revoke_subject(self, subject: str, now: float, until: float | None) -> None:
        """Deny every token of ``subject`` issued before ``now``."""

    def revocations(self, now: float) -> Sequence[Revocation]:
        """The revocation list in force."""

    def lockouts(self, now: float) -> Sequence[Lockout]:
        """The lockouts in force."""

    def clear_lockout(self, kind: str, value: str) -> bool:
        """End one lockout early; false when there was none."""

    def clear_lockouts(self) -> int:
        """End every lockout; how many there were."""

    def close(self) -> None:
        """Release connections and threads."""
