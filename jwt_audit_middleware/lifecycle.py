"""One request's life, written once: decide, answer or attach, audit exactly once.

Every adapter (ASGI, WSGI, Django; Flask goes through WSGI) makes the same
calls and only translates its own world around them::

    lifecycle = Lifecycle(settings, options)               # at start-up
    verdict = gate.decide_sync(route_path, authorization)  # WSGI, Django sync; or:
    verdict = gate.decide(route_path, authorization)       # on an event loop, then
    if verdict.unsettled:                                  # key refetch, revocation hook
        verdict = await gate.settle_async(verdict, route_path, authorization)
    exchange = lifecycle.begin(verdict, info)
    if exchange.denied:                                    # send exchange.challenge()
        exchange.finish(status)
    else:
        lifecycle.attach(carrier, verdict)                 # (+ attach_environ for CGI-style)
        ... call the app; when its response starts:
        challenge = exchange.late_challenge(carrier)       # a view's deny_request()
        exchange.finish(status)                            # idempotent: one event

``Exchange.finish()`` emits the one ``access`` or ``denial`` event of the
request; a report-only would-deny is emitted when decided, since the app's
answer changes nothing about it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, MutableMapping
from typing import Any

from .audit import AuditLogger
from .errors import ConfigurationError
from .events import WOULD_DENY
from .metrics import instrument
from .model import (
    EXEMPT,
    LATE_DENIAL_KEY,
    MODE_KEY,
    PREFLIGHT_KEY,
    SCOPE_KEY,
    Challenge,
    RequestInfo,
    Verdict,
    VerifiedToken,
)
from .policy import Gate
from .request import RequestReader
from .settings import Settings
from .state import StateStore
from .verifier import Verifier


class Exchange:
    """One request in flight: its verdict, its request fields, its one event."""

    __slots__ = ("_audit", "_gate", "done", "info", "verdict")

    def __init__(self, gate: Gate, audit: AuditLogger, verdict: Verdict, info: RequestInfo) -> None:
        self._gate = gate
        self._audit = audit
        self.verdict = verdict
        self.info = info
        self.done = False
        if verdict.outcome == WOULD_DENY:  # report-only: the event is known now
            self.finish(verdict.status)

    @property
    def denied(self) -> bool:
        """Whether the app is not called: answer with ``challenge()``."""
        return not self.verdict.allow

    def challenge(self) -> Challenge:
        """The RFC 6750 response of a denied request."""
        return self._gate.challenge(self.verdict)

    def late_challenge(self, carrier: MutableMapping[str, Any]) -> Challenge | None:
        """The challenge that replaces the app's response after ``deny_request()``, if any.

        In report-only mode the request goes on and its event says ``would_deny``.
        """
        late = carrier.get(LATE_DENIAL_KEY)
        if late is None or self.done:
            return None
        verdict = self._gate.late_denial(self.verdict, late)
        if verdict is None:
            return None
        self.verdict = verdict
        if verdict.outcome == WOULD_DENY:
            self.finish(verdict.status)
            return None
        return self._gate.challenge(verdict)

    def finish(self, status: int | None) -> None:
        """Emit the request's audit event with the status sent; later calls do nothing."""
        if self.done:
            return
        self.done = True
        self._audit.request_event(self.verdict, self.info, status)


class Lifecycle:
    """Everything a middleware needs, built once at construction, and the shared steps.

    ``settings`` or ``options`` (not both); a bad option raises
    ``ConfigurationError`` here.
    """

    __slots__ = (
        "_environ_identity_keys",
        "_report_only",
        "audit",
        "begin",
        "gate",
        "identity_headers",
        "reader",
        "settings",
    )

    def __init__(self, settings: Settings | None, options: dict[str, Any]) -> None:
        if settings is not None and options:
            raise ConfigurationError(
                next(iter(options)), "give either settings=Settings(...) or options, not both"
            )
        if settings is None:
            settings = Settings(**options)
        elif not isinstance(settings, Settings):
            raise ConfigurationError("settings", "expected a Settings instance")
        self.settings = settings
        self.audit = AuditLogger()
        self.gate = Gate(
            settings, Verifier(settings, key_events=self.audit.emit), events=self.audit.emit
        )
        instrument(settings.metrics, self.audit, self.gate)  # metrics=: Prometheus
        self.reader = RequestReader(settings)
        self._report_only = self.gate.report_only  # attach() reads it on every request
        #: ``begin(verdict, info)``: the request's ``Exchange``, the one event still to emit
        self.begin: Callable[[Verdict, RequestInfo], Exchange] = functools.partial(
            Exchange, self.gate, self.audit
        )
        names = settings.identity_headers  # lower-case header names, Remote-User first
        #: ASGI header names (bytes, lower case) a client may not send: removed, in
        #: either spelling (h11 accepts "remote_user", and a WSGI bridge maps both
        #: to HTTP_REMOTE_USER)
        self.identity_headers = frozenset(
            spelling.encode("latin-1")
            for name in names
            for spelling in (name, name.replace("-", "_"))
        )
        self._environ_identity_keys = tuple(
            "HTTP_" + name.upper().replace("-", "_") for name in names
        )

    def attach(self, carrier: MutableMapping[str, Any], verdict: Verdict) -> VerifiedToken | None:
        """Leave the verdict where ``get_claims()`` and ``deny_request()`` find it.

        Returns the verified token (``None`` on an exempt path or for an
        anonymous request on an optional one).
        """
        if self._report_only:
            carrier[MODE_KEY] = "report-only"
        if verdict.path_kind == EXEMPT:
            carrier.setdefault(SCOPE_KEY, None)
            if verdict is self.gate.preflight:
                carrier[PREFLIGHT_KEY] = True
            return None
        token = verdict.token
        carrier[SCOPE_KEY] = token
        return token

    def attach_environ(
        self, environ: MutableMapping[str, Any], verdict: Verdict, *, header_too: bool = False
    ) -> VerifiedToken | None:
        """``attach()`` for a CGI-style mapping (a WSGI environ, Django's ``request.META``).

        The verified identity becomes the only one downstream can read: the
        client's identity headers (``HTTP_REMOTE_USER`` …) are removed and
        ``REMOTE_USER`` is the token's identity or absent, whatever an outer
        layer (mod_wsgi, another auth middleware) put there.  ``header_too``
        also sets ``HTTP_REMOTE_USER`` to it, where Django's async
        ``RemoteUserMiddleware`` reads (Django 5.x).
        """
        token = self.attach(environ, verdict)
        for key in self._environ_identity_keys:
            environ.pop(key, None)
        identity = None if token is None else token.identity
        if identity is None:
            environ.pop("REMOTE_USER", None)
        else:
            environ["REMOTE_USER"] = identity
            if header_too:
                environ["HTTP_REMOTE_USER"] = identity
        return token

    @property
    def state(self) -> StateStore | None:
        """The abuse-detection store (revocations, lockouts); ``None`` when not configured."""
        guard = self.gate.guard
        return None if guard is None else guard.store

    def close(self) -> None:
        """Stop background work (the refresh threads of ``jwks_url`` key sets)."""
        self.gate.close()


__all__ = ["Exchange", "Lifecycle"]
