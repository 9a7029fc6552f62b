"""Abuse detection acting on the verdicts: lockouts, the revocation list, alerts (contract §9).

The ``Gate`` asks its ``Guard`` twice per request, and only when
``abuse_detection`` or ``state_url`` is configured:

1. ``locked(client_ip)`` before any token work: a client IP this process
   knows to be locked out is answered 429 ``locked_out`` at the cost of a
   dictionary look-up, so a flood of forged tokens never reaches a signature
   check.
2. ``after(verdict, client_ip)`` once the verdict is otherwise known: one
   ``StateStore.probe()`` answers whether the IP or the verified subject is
   locked and whether the token is on the revocation list, and counts the
   request towards the detectors.  With a store in Redis the verdict comes
   back ``unsettled`` and the probe runs in ``settle_sync()`` /
   ``settle_async()``: one round trip, never on the event loop's thread.

Lockouts learnt from the store (this process's or another's) are kept in the
local mirror for ``MIRROR_SECONDS``, which is what makes step 1 work across
processes after a locked client's first request (and a lockout ended
elsewhere end here within that time).  Denials the app makes
itself with ``deny_request()`` are not counted: the probe runs before the app.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .events import DENIED, app_event
from .model import Verdict
from .settings import Settings
from .state import (
    DENIAL_BURST_IP,
    DENIAL_BURST_SUBJECT,
    NOTHING,
    Alert,
    Answer,
    Probe,
    StateStore,
    Thresholds,
)

#: the event and outcome of an alert (contract §9)
ALERT = "alert"
DETECTED = "detected"

#: how long a lockout learnt from the store is trusted here without asking again: a
#: locked client's flood costs one probe per this many seconds, not one per request
MIRROR_SECONDS = 1.0
#: what a client without an address is called (a Unix socket, an empty REMOTE_ADDR)
_NO_ADDRESS = frozenset({"unknown", ""})
#: local lockout mirror entries kept at most (beyond it the oldest are dropped:
#: the store still has them, so a dropped one comes back on the client's next probe)
_MAX_MIRRORED = 65536


class Guard:
    """Lockouts, revocations and detectors around the ``Gate``'s verdicts.

    ``deny(reason, verdict, report, retry_after)`` is the Gate's way of building a denial
    (report-only or not, the token kept when the request goes on), passed in
    so that this module needs nothing of the Gate.
    """

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        emit: Callable[[dict[str, Any], int], None],
        deny: Callable[[str, Verdict, bool, int | None], Verdict],
    ) -> None:
        abuse = settings.abuse
        global_report = settings.mode == "report-only"
        self.enforce_lockout = not global_report and "lockout" not in settings.report_only
        self.report_revocation = global_report or "revocation" in settings.report_only
        self.thresholds = (
            None
            if abuse is None
            else Thresholds(
                abuse.window_seconds,
                abuse.denials_per_ip,
                abuse.denials_per_subject,
                abuse.ips_per_token,
                abuse.lockout_seconds,
                self.enforce_lockout,
            )
        )
        self.counting = abuse is not None
        self.store = store
        self._emit = emit
        self._deny = deny
        self._window = 0 if abuse is None else abuse.window_seconds
        #: client IPs known here to be locked out → (trusted until, locked until), wall
        #: clock; trusted for at most MIRROR_SECONDS, so a lockout ended elsewhere (the
        #: ``jwt-audit lockouts --clear`` command) ends here within that time too
        self.mirror: dict[str, tuple[float, float]] = {}

    # -- step 1: before any token work -------------------------------------------

    def locked(self, client_ip: str | None) -> Verdict | None:
        """The ``locked_out`` verdict for a client IP known to be locked, else ``None``."""
        mirror = self.mirror
        if not mirror or client_ip is None:
            return None
        known = mirror.get(client_ip)
        if known is None:
            return None
        now = time.time()
        trusted_until, until = known
        if trusted_until <= now:  # ask the store again (it may have ended meanwhile)
            mirror.pop(client_ip, None)  # another thread may have done so already
            return None
        if not self.enforce_lockout:
            return None  # report-only: the token work goes on, after() reports it
        return self._locked_out(None, until, now)

    # -- step 2: the probe ---------------------------------------------------------

    def after(self, verdict: Verdict, client_ip: str | None) -> Verdict:
        """Probe the store for ``verdict`` (settled otherwise); apply the answer."""
        if not self._asks(verdict):
            return verdict
        if self.store_blocks:  # the probe is built where it runs, in settle_*()
            return replace(verdict, pending_state=True)
        probe = self._probe(verdict, client_ip)
        assert probe is not None  # _asks() said so
        return self.apply(verdict, self.store.probe(probe, self.thresholds), probe)

    def _asks(self, verdict: Verdict) -> bool:
        """Whether the store has anything to say: detection counts, or a token to look up."""
        return self.counting or verdict.token is not None

    def settle_sync(self, verdict: Verdict, client_ip: str | None) -> Verdict:
        """``after()``'s probe in this thread (a store in Redis: one round trip)."""
        verdict = replace(verdict, pending_state=False)
        probe = self._probe(verdict, client_ip)
        if probe is None:
            return verdict
        return self.apply(verdict, self.store.probe(probe, self.thresholds), probe)

    async def settle_async(self, verdict: Verdict, client_ip: str | None) -> Verdict:
        """``after()``'s probe from an event loop, never blocking it."""
        verdict = replace(verdict, pending_state=False)
        probe = self._probe(verdict, client_ip)
        if probe is None:
            return verdict
        answer = await self.store.aprobe(probe, self.thresholds)
        return self.apply(verdict, answer, probe)

    @property
    def store_blocks(self) -> bool:
        """Whether a probe does I/O now (Redis reachable), so must run off the loop."""
        return bool(getattr(self.store, "blocking", False))

    def _probe(self, verdict: Verdict, client_ip: str | None) -> Probe | None:
        """What the store needs to know of this request; ``None``: nothing to ask."""
        if client_ip in _NO_ADDRESS:  # every such client would share one count and lock
            client_ip = None
        token = verdict.token
        base = verdict.event_base
        subject = base.get("subject")  # only ever from a token whose signature verified
        if token is not None:
            claims = token.claims
            jti = token.token_id
            iat = claims.get("iat")
            issued_at = float(iat) if isinstance(iat, (int, float)) else None
            fingerprint = verdict.fingerprint
        else:
            jti = base.get("token_id")
            issued_at = None
            fingerprint = verdict.fingerprint if subject is not None else None
        if not self._asks(verdict):
            return None  # only the revocation list to ask, and no token to ask about
        denial = verdict.reason
        return Probe(
            time.time(),
            client_ip,
            subject,
            jti,
            issued_at,
            fingerprint,
            denial,
            self.counting,
        )

    def apply(self, verdict: Verdict, answer: Answer, probe: Probe) -> Verdict:
        """The verdict after the store's answer: alerts emitted, lockouts, revocation.

        A request that crosses a threshold keeps its own denial; the lockout
        its alert sets applies from the next request on.
        """
        if answer is NOTHING:
            return verdict
        now = probe.now
        for alert in answer.alerts:
            self._alert(alert, now)
            if alert.locked_until is not None and alert.reason == DENIAL_BURST_IP:
                self._mirror(alert.key, alert.locked_until, now)
        if answer.ip_locked_until is not None and probe.client_ip is not None:
            self._mirror(probe.client_ip, answer.ip_locked_until, now)
        ends = [u for u in (answer.ip_locked_until, answer.subject_locked_until) if u]
        until = max(ends, default=0.0)
        locked = until > now
        if locked and self.enforce_lockout:
            return self._locked_out(verdict, until, now)
        if answer.revoked and verdict.allow:
            # also over a report-only denial (scopes, lockout, mode): a revoked
            # token is refused where revocation enforces, and never attached
            return self._deny("revoked", verdict, self.report_revocation, None)
        if locked and verdict.reason is None:  # report-only lockout: what would have happened
            return self._deny("locked_out", verdict, True, _seconds_left(until, now))
        return verdict

    def _mirror(self, client_ip: str, until: float, now: float) -> None:
        """Remember a lockout of ``client_ip`` here for a moment, for ``locked()``."""
        mirror = self.mirror  # shared by request threads: pop(), never del, and snapshots
        if len(mirror) >= _MAX_MIRRORED and client_ip not in mirror:
            for key, (trusted, _) in list(mirror.items()):
                if trusted <= now:
                    mirror.pop(key, None)
            for key in list(mirror)[: max(0, len(mirror) - _MAX_MIRRORED + 1)]:
                mirror.pop(key, None)
        mirror[client_ip] = (min(until, now + MIRROR_SECONDS), until)

    def _locked_out(self, verdict: Verdict | None, until: float, now: float) -> Verdict:
        return self._deny("locked_out", verdict or _NO_VERDICT, False, _seconds_left(until, now))

    def _alert(self, alert: Alert, now: float) -> None:
        fields: dict[str, Any] = {}
        if alert.reason == DENIAL_BURST_IP:
            fields["client_ip"] = alert.key
        elif alert.reason == DENIAL_BURST_SUBJECT:
            fields["subject"] = alert.key
        else:  # token_shared, revoked_token_used: the token's fingerprint
            fields["token_fingerprint"] = alert.key
        detail = f"{alert.count} in {self._window} s"
        if alert.locked_until is not None:
            detail += f"; locked out for {_seconds_left(alert.locked_until, now)} s"
        event = app_event(ALERT, DETECTED, reason=alert.reason, detail=detail, **fields)
        event["count"] = alert.count
        event["window_seconds"] = self._window
        self._emit(event, logging.WARNING)

    async def aclose(self) -> None:
        """Close the store's client of the running event loop, if it has one."""
        aclose = getattr(self.store, "aclose", None)
        if aclose is not None:
            await aclose()

    def close(self) -> None:
        """Release the store's connections and threads."""
        self.store.close()


def _seconds_left(until: float, now: float) -> int:
    """Whole seconds until ``until``, at least 1 (``Retry-After``, RFC 9110 §10.2.3)."""
    return max(1, math.ceil(until - now))


_NO_VERDICT = Verdict(False, DENIED)  # a lockout before any token work: no identity

__all__ = ["ALERT", "DETECTED", "Guard"]
