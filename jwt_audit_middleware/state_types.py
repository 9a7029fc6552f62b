"""The interface of abuse detection's state store: what is asked, what is answered.

A leaf (it imports nothing of ours), so that both stores, ``state.MemoryStore``
and ``state_redis.RedisStore``, and the ``abuse.Guard`` that calls them, share
these values without an import circle.  The semantics every store implements
are written down in ``state``'s module docstring; import these names from
``state``.
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

    @property
    def blocking(self) -> bool:
        """Whether ``probe()`` does I/O now (Redis reachable): then not on an event loop."""

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
