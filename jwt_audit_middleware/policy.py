"""Request policy: which paths need a token, which scopes, and the verdict.

``Gate.decide()`` (then ``settle_sync()`` / ``settle_async()`` for an
``unsettled`` verdict; ``decide_sync()`` does both) is the one decision every
adapter (ASGI, WSGI, Django, Flask) asks for: the path the app routes on and
the ``Authorization`` values in, a frozen ``Verdict`` out.  Challenges
(status, headers, body) are built here once per reason at start-up.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from hashlib import sha256 as _sha256
from typing import Any

import anyio.to_thread
from asgiref.sync import async_to_sync

from .abuse import Guard
from .cache import TokenCache
from .errors import Denied
from .events import (
    ALLOWED,
    DENIED,
    REASONS,
    WOULD_DENY,
    copy_claims,
    fingerprint_of_digest,
    identity_fields,
)
from .model import EXEMPT, OPTIONAL, REQUIRED, Challenge, Verdict, VerifiedToken, event_base
from .settings import Settings
from .state import open_store
from .verifier import Verifier

internal_logger = logging.getLogger("jwt_audit.internal")
_WARNING = logging.WARNING


def _log_event(event: dict[str, Any], level: int) -> None:
    """Where a Gate built without an audit logger sends alerts: the ``jwt_audit`` logger."""
    logging.getLogger("jwt_audit").log(
        level,
        "%s %s %s",
        event["event"],
        event["outcome"],
        event["reason"],
        extra={"jwt_audit": event},
    )


def normalise_path(path: str) -> str:
    """Resolve ``.``/``..`` segments and collapse ``//`` (RFC 3986 §5.2.4)."""
    if "/." not in path and "//" not in path:
        return path
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
        else:
            out.append(segment)
    trailing = "/" if path.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + trailing


class _Prefixes:
    """Path prefixes matched on segment boundaries: ``/a`` matches ``/a``, ``/a/b``, not ``/ab``.

    ``/`` names the root page only: as a prefix it would match every path.
    """

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, paths: Iterable[str]) -> None:
        stripped = [p.rstrip("/") for p in paths]
        self._exact = frozenset(p or "/" for p in stripped)
        self._prefixes = tuple(p + "/" for p in stripped if p)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path in self._exact or path.startswith(self._prefixes))


class _MethodPrefixes:
    """``exempt_paths`` / ``optional_paths``: prefixes for every method, and per method.

    ``"GET /docs"`` holds for ``GET`` and ``HEAD`` (a server answers ``HEAD``
    with the ``GET`` route: the rule must not be dodged by asking for ``HEAD``).
    """

    __slots__ = ("_any", "_by_method")

    def __init__(self, rules: tuple[str, ...]) -> None:
        self._any = _Prefixes(rule for rule in rules if rule.startswith("/"))
        by_method: dict[str, list[str]] = {}
        for rule in rules:
            if not rule.startswith("/"):
                method, _, path = rule.partition(" ")
                by_method.setdefault(method, []).append(path)
        self._by_method = {method: _Prefixes(paths) for method, paths in by_method.items()}

    def matches(self, path: str, method: str) -> bool:
        if path in self._any:
            return True
        by_method = self._by_method
        if not by_method:
            return False
        prefixes = by_method.get(_rule_method(method))
        return prefixes is not None and path in prefixes


def _rule_method(method: str) -> str:
    """The method a rule names for ``method``: ``HEAD`` is answered as ``GET``.

    Upper-cased: a server may pass ``post`` on as sent, and Flask and Django
    upper-case it before routing, so ``post`` reaches the ``POST`` view.
    """
    method = method.upper()
    return "GET" if method == "HEAD" else method


class PathPolicy:
    """Compiled ``exempt_paths``, ``optional_paths`` and ``path_scopes`` (contract §8).

    Paths are those the wrapped app routes on (the adapters strip a mount
    prefix).  In ``path_scopes`` the longest matching prefix wins and ``/`` is
    the rule for every path no longer prefix claims; a path both optional and
    scoped needs a token.  A path with dot segments or empty segments is first
    normalised the way a proxy or router might; it is never exempt or optional
    (a ``/health/../admin`` trick cannot skip authentication) and needs the
    scopes of both forms.
    """

    def __init__(self, settings: Settings) -> None:
        self._exempt = _MethodPrefixes(tuple(settings.exempt_paths))
        self._optional = _MethodPrefixes(tuple(settings.optional_paths))
        rules = []
        for key, scopes in settings.path_scopes.items():
            # "/orders", "/my docs" or "GET /orders" (settings left one space after a method)
            method, prefix = (None, key) if key.startswith("/") else key.split(" ", 1)
            stripped = prefix.rstrip("/")
            rules.append((method, stripped, stripped + "/", tuple(scopes)))
        # the longest prefix first; at the same length a method's own rule first.
        # (method, exact path, prefix + "/", scopes); "/" has an empty prefix: every path
        rules.sort(key=lambda rule: (-len(rule[1]), rule[0] is None))
        self._scopes = tuple(rules)
        self.has_rules = bool(settings.exempt_paths or settings.optional_paths or rules)

    def rule(self, path: str, method: str = "GET") -> tuple[str, tuple[str, ...]]:
        """``(kind, required scopes)`` for ``path``: ``exempt``, ``optional`` or ``required``."""
        normalised = normalise_path(path)
        if normalised != path:
            return REQUIRED, self._required({path, normalised}, method)
        if self._exempt.matches(path, method):
            return EXEMPT, ()
        required = self._required((path,), method)
        if not required and self._optional.matches(path, method):
            return OPTIONAL, ()
        return REQUIRED, required

    def _required(self, paths: Iterable[str], method: str) -> tuple[str, ...]:
        """The scopes of the longest matching ``path_scopes`` rule of each path, together."""
        required: dict[str, None] = {}
        method = _rule_method(method)
        for path in paths:
            for rule_method, exact, prefix, scopes in self._scopes:
                if rule_method is not None and rule_method != method:
                    continue
                if not exact or path == exact or path.startswith(prefix):
                    required.update(dict.fromkeys(scopes))
                    break
        return tuple(required)


class Gate:
    """The single decision every adapter asks for: path and headers in, a ``Verdict`` out.

    ``decide()`` and ``settle_sync()`` / ``settle_async()`` are the whole
    decision: path rules, the token (from the cache or verified), a refetch
    of a JWKS URL for an unknown key, the revocation hook, and a bug of ours
    turned into an ``internal_error`` denial.  The two settle flavours differ
    only in how the steps that may block run: in the caller's thread, or in a
    worker thread off the loop.
    """

    def __init__(
        self,
        settings: Settings,
        verifier: Verifier | None = None,
        *,
        events: Callable[[dict[str, Any], int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.verifier = verifier or Verifier(settings)
        self.paths = PathPolicy(settings)
        self.report_only = settings.mode == "report-only"
        # per-rule report-only (contract §9): these denials let the request go on
        self._scopes_report_only = self.report_only or "scopes" in settings.report_only
        self._revocation_report_only = self.report_only or "revocation" in settings.report_only
        self.revocation_check = settings.revocation_check
        self.revocation_is_async = settings.revocation_is_async
        self.cache = TokenCache(settings.cache_size) if settings.cache_size else None
        self._leeway = settings.leeway_seconds
        self._log_claims = tuple(settings.log_claims)
        self._challenges = {reason: self._challenge(reason, ()) for reason in REASONS}
        self._denials: dict[tuple[str, str, str, bool], Verdict] = {}
        self._exempt = Verdict(True, ALLOWED, path_kind=EXEMPT)
        self._anonymous = Verdict(True, ALLOWED, path_kind=OPTIONAL)
        #: the verdict of a CORS preflight let through (``pass_cors_preflight``), if on
        self.preflight = (
            Verdict(True, ALLOWED, path_kind=EXEMPT, detail="CORS preflight")
            if settings.pass_cors_preflight
            else None
        )
        self._retry_challenges: dict[int, Challenge] = {}
        #: abuse detection, lockouts, the revocation list: only when configured
        self.guard: Guard | None = None
        if settings.abuse is not None or settings.state_url is not None:
            emit = events or _log_event
            store = open_store(settings.state_url, events=lambda event: emit(event, _WARNING))
            self.guard = Guard(settings, store, emit, self._guard_denial)

    # -- the decision --------------------------------------------------------

    def decide(
        self,
        path: str,
        authorization: list[str],
        client_ip: str | None = None,
        preflight: bool = False,
        method: str = "GET",
    ) -> Verdict:
        """The verdict as far as it goes without I/O; a bug of ours is ``internal_error``.

        A CORS ``preflight`` (the adapter saw ``OPTIONS`` with
        ``Access-Control-Request-Method``) without credentials goes through
        when ``pass_cors_preflight`` is on.  Then path rules, a lockout of
        ``client_ip`` (abuse detection), then the token:
        a cache hit, or a first-seen token verified.  An ``unsettled`` verdict
        still needs ``settle_sync()`` or ``settle_async()``: a refetch of a JWKS
        URL for an unknown key, the revocation hook, or a store in Redis.
        """
        try:
            if preflight and self.preflight is not None and not authorization:
                return self.preflight
            paths = self.paths
            kind, required = paths.rule(path, method) if paths.has_rules else _REQUIRED_RULE
            if kind == EXEMPT:
                return self._exempt
            guard = self.guard
            if guard is None:
                return self._token_verdict(authorization, kind, required)
            locked = guard.locked(client_ip)
            if locked is not None:  # before any token work: a look-up, not a signature check
                return locked
            verdict = self._token_verdict(authorization, kind, required)
            return verdict if verdict.unsettled else guard.after(verdict, client_ip)
        except Exception:  # noqa: BLE001 - a bug of ours must not reach the server
            return self.internal_error("decide")

    def _token_verdict(
        self, authorization: list[str], kind: str, required: tuple[str, ...]
    ) -> Verdict:
        """The verdict on the request's token: from the cache, or verified now."""
        cache = self.cache
        if cache is not None and len(authorization) == 1:
            # Fast path: a token seen before.  Only verified tokens are cached, so
            # a hit has passed every syntax check already; anything unusual
            # (other casing, extra spaces) simply misses and takes the full path.
            value = authorization[0]
            if value.startswith(_BEARER):
                # utf-8 never fails (a server may decode headers beyond latin-1); a
                # non-ASCII value simply misses and is refused on the full path
                digest = _sha256(value[7:].encode("utf-8", "surrogatepass")).digest()
                verifier = self.verifier
                cached = cache.get(digest, verifier.clock(), verifier.keys_version)
                if cached is not None:
                    if kind == REQUIRED and not required:
                        return cached  # what _allowed() returns without path rules
                    return self._allowed(cached, kind, required)
        return self._first_seen(authorization, kind, required)

    def decide_sync(
        self,
        path: str,
        authorization: list[str],
        client_ip: str | None = None,
        preflight: bool = False,
        method: str = "GET",
    ) -> Verdict:
        """The whole verdict, the blocking steps in this thread (WSGI, Django sync)."""
        verdict = self.decide(path, authorization, client_ip, preflight, method)
        if verdict.unsettled:
            return self.settle_sync(verdict, path, authorization, client_ip, method)
        return verdict

    def settle_sync(
        self,
        verdict: Verdict,
        path: str,
        authorization: list[str],
        client_ip: str | None = None,
        method: str = "GET",
    ) -> Verdict:
        """Run an unsettled verdict's key refetch, revocation hook and store probe here.

        The store is asked last, about the verdict the other steps leave.
        """
        try:
            guard = self.guard
            if not verdict.pending_state:  # decide() left the guard for after these steps
                if verdict.refresh_keys is not None:
                    verdict.refresh_keys()  # blocks up to jwks_timeout; one fetch for all waiting
                    verdict = self._evaluate_again(path, authorization, method)
                verdict = self.resolve_sync(verdict)
                if guard is None:
                    return verdict
                verdict = guard.after(verdict, client_ip)
            if guard is not None and verdict.pending_state:
                verdict = guard.settle_sync(verdict, client_ip)
            return verdict
        except Exception:  # noqa: BLE001 - a bug of ours must not reach the server
            return self.internal_error("settle")

    async def settle_async(
        self,
        verdict: Verdict,
        path: str,
        authorization: list[str],
        client_ip: str | None = None,
        method: str = "GET",
    ) -> Verdict:
        """``settle_sync()`` from an event loop: blocking calls run in a worker thread."""
        try:
            guard = self.guard
            if not verdict.pending_state:
                if verdict.refresh_keys is not None:
                    await anyio.to_thread.run_sync(verdict.refresh_keys)
                    verdict = self._evaluate_again(path, authorization, method)
                verdict = await self.resolve_async(verdict)
                if guard is None:
                    return verdict
                verdict = guard.after(verdict, client_ip)
            if guard is not None and verdict.pending_state:
                verdict = await guard.settle_async(verdict, client_ip)
            return verdict
        except Exception:  # noqa: BLE001 - a bug of ours must not reach the server
            return self.internal_error("settle")

    def _first_seen(
        self, authorization: list[str], kind: str, required: tuple[str, ...]
    ) -> Verdict:
        """A token not in the cache: extracted, verified, cached, checked against the path."""
        cache = self.cache
        try:
            token_text = self.verifier.token_from_headers(authorization)
        except Denied as denied:
            if kind == OPTIONAL and denied.reason in ("missing_token", "unsupported_scheme"):
                # no bearer token (perhaps credentials for another layer): anonymous
                return self._anonymous
            return self.deny(denied, None, kind)
        digest = _sha256(token_text.encode("ascii")).digest()
        print_ = fingerprint_of_digest(digest)
        version = self.verifier.keys_version  # before verifying: a swap meanwhile is not missed
        try:
            token = self.verifier.verify(token_text, print_)
        except Denied as denied:
            refresh = None
            if denied.reason in _KEY_REASONS:
                refresh = self.verifier.key_request(token_text)
            return self.deny(denied, print_, kind, refresh_keys=refresh)
        verdict = Verdict(
            True,
            ALLOWED,
            token=token,
            fingerprint=print_,
            pending_revocation=self.revocation_check is not None,
        )
        if cache is not None:
            cache.put(digest, verdict, version, *self._valid_span(token))
        return self._allowed(verdict, kind, required)

    def _valid_span(self, token: VerifiedToken) -> tuple[float, float]:
        """The wall-clock span in which ``token``'s time claims hold (with leeway)."""
        leeway = self._leeway
        claims = token.claims  # nbf and iat are numbers or absent: the verifier checked
        valid_from = max(claims.get("nbf", -math.inf), claims.get("iat", -math.inf)) - leeway
        valid_until = math.inf if token.expires_at is None else token.expires_at + leeway
        return valid_from, valid_until

    def _allowed(self, verdict: Verdict, kind: str, required: tuple[str, ...]) -> Verdict:
        """``verdict`` (a verified token) checked against the path's rule."""
        token = verdict.token
        assert token is not None
        if required and not token.scopes.issuperset(required):
            lacking = Denied(
                "insufficient_scope",
                "the token lacks a required scope",
                required_scopes=required,
            )
            # report-only attaches the token: the revocation hook must still run on it
            report = self._scopes_report_only
            pending = verdict.pending_revocation and report
            return self.deny(
                lacking, verdict.fingerprint, kind, token=token, pending=pending, report=report
            )
        if kind != REQUIRED:
            return replace(verdict, path_kind=kind)
        return verdict

    def deny(
        self,
        denied: Denied,
        fingerprint: str | None,
        kind: str = REQUIRED,
        token: VerifiedToken | None = None,
        *,
        refresh_keys: Callable[[], object] | None = None,
        pending: bool = False,
        report: bool | None = None,
    ) -> Verdict:
        """The verdict for a denial, or a would-deny in report-only mode.

        ``token`` is the verified token of a denial that came after
        verification (scopes, revocation, the app's own ``deny_request``);
        ``pending``: the revocation hook is still to run on it.  ``report``:
        whether the request goes on (default: ``mode="report-only"``; a
        ``report_only`` rule says so for its own denials).  A denial
        with nothing of the request's own (``missing_token``, a malformed
        header) is built once and shared: a scanner's flood of 401s costs a
        look-up each.
        """
        if report is None:
            report = self.report_only
        shareable = (
            token is None
            and fingerprint is None
            and refresh_keys is None
            and denied.claims is None
            and denied.alg is None
            and not denied.required_scopes
        )
        key = (denied.reason, denied.detail, kind, report)
        if shareable and key in self._denials:
            return self._denials[key]
        verdict = self._denial(denied, fingerprint, kind, token, refresh_keys, pending, report)
        if shareable and len(self._denials) < _MAX_SHARED_DENIALS:
            self._denials[key] = verdict
        return verdict

    def _denial(  # noqa: PLR0917 - deny()'s arguments, passed on
        self,
        denied: Denied,
        fingerprint: str | None,
        kind: str,
        token: VerifiedToken | None,
        refresh_keys: Callable[[], object] | None,
        pending: bool,
        report: bool,
    ) -> Verdict:
        outcome = WOULD_DENY if report else DENIED
        if token is not None:
            fields = token.event_fields
        else:  # verified claims (expired, ...) or only the header's alg and kid
            claims = denied.claims or {}
            scopes = self.verifier.scopes(claims) if claims else frozenset()
            fields = identity_fields(claims, scopes, denied.alg, denied.kid)
            fields["claims"] = copy_claims(claims, self._log_claims) if claims else {}
        return Verdict(
            report,
            outcome,
            reason=denied.reason,
            status=REASONS[denied.reason].status,
            detail=denied.detail,
            token=token if report else None,
            fingerprint=fingerprint,
            required_scopes=denied.required_scopes,
            path_kind=kind,
            pending_revocation=pending,
            refresh_keys=refresh_keys,
            event_base=event_base(outcome, denied.reason, fingerprint, denied.detail, fields),
        )

    def late_denial(self, verdict: Verdict, denied: object) -> Verdict | None:
        """The verdict for a denial the app left with ``deny_request()``, if any."""
        if not isinstance(denied, Denied) or verdict.reason is not None:
            return None  # nothing left, or already a (would-be) denial
        token = verdict.token
        if token is None:  # anonymous (optional or exempt path): what it lacks is a token
            denied = Denied("missing_token", denied.detail)
        return self.deny(denied, verdict.fingerprint, verdict.path_kind, token=token)

    def internal_error(self, where: str) -> Verdict:
        """Log the current exception on ``jwt_audit.internal``; fail closed."""
        internal_logger.error("jwt_audit: internal error in %s", where, exc_info=True)
        return self.deny(Denied("internal_error", "internal error"), None)

    def _guard_denial(
        self, reason: str, verdict: Verdict, report: bool, retry_after: int | None
    ) -> Verdict:
        """A denial the guard makes of ``verdict``: ``locked_out`` or ``revoked``.

        The event keeps the identity of the verdict's token; ``report``: the
        request goes on (report-only), with the token attached unless revoked.
        """
        outcome = WOULD_DENY if report else DENIED
        spec = REASONS[reason]
        # a revoked token is never attached, not even in report-only mode
        token = None if reason == "revoked" else verdict.token
        return Verdict(
            report,
            outcome,
            reason=reason,
            status=spec.status,
            detail=spec.description,
            token=token if report else None,
            fingerprint=verdict.fingerprint,
            path_kind=verdict.path_kind,
            retry_after=retry_after,
            event_base=event_base(
                outcome, reason, verdict.fingerprint, spec.description, verdict.event_base
            ),
        )

    def _evaluate_again(self, path: str, authorization: list[str], method: str) -> Verdict:
        kind, required = self.paths.rule(path, method)
        if kind == EXEMPT:
            return self._exempt
        verdict = self._token_verdict(authorization, kind, required)
        if verdict.refresh_keys is not None:  # one refresh per request
            verdict = replace(verdict, refresh_keys=None)
        return verdict

    async def aclose(self) -> None:
        """Close what belongs to the running event loop (the store's asyncio client)."""
        if self.guard is not None:
            await self.guard.aclose()

    def close(self) -> None:
        """Stop background work (``jwks_url`` refresh threads, the state store's)."""
        self.verifier.close()
        if self.guard is not None:
            self.guard.close()

    # -- the revocation hook ------------------------------------------------

    def _after_revocation(self, verdict: Verdict, revoked: object) -> Verdict:
        if revoked is True or (revoked and not isinstance(revoked, bool)):
            token = verdict.token
            assert token is not None
            # claims for the event only: a revoked token is never attached, not even
            # in report-only mode
            denied = Denied(
                "revoked",
                "the token has been revoked",
                alg=token.alg,
                kid=token.kid,
                claims=token.claims,
            )
            report = self._revocation_report_only
            return self.deny(denied, verdict.fingerprint, verdict.path_kind, report=report)
        return replace(verdict, pending_revocation=False)

    def resolve_sync(self, verdict: Verdict) -> Verdict:
        """Run the revocation hook, if the verdict waits for it, in this thread."""
        if not verdict.pending_revocation:
            return verdict
        check: Callable[..., Any] = self.revocation_check  # type: ignore[assignment]
        assert verdict.token is not None
        try:
            if self.revocation_is_async:
                revoked = async_to_sync(check)(verdict.token.claims)
            else:
                revoked = check(verdict.token.claims)
        except Exception:  # noqa: BLE001 - fail closed, with a traceback
            return self.internal_error("revocation_check")
        return self._after_revocation(verdict, revoked)

    async def resolve_async(self, verdict: Verdict) -> Verdict:
        """Run the revocation hook from an event loop.

        An ``async def`` hook is awaited; a plain function runs in a worker
        thread, since it may well do I/O (a database or Redis look-up).
        """
        if not verdict.pending_revocation:
            return verdict
        check: Callable[..., Any] = self.revocation_check  # type: ignore[assignment]
        assert verdict.token is not None
        try:
            if self.revocation_is_async:
                revoked = await check(verdict.token.claims)
            else:
                revoked = await anyio.to_thread.run_sync(check, verdict.token.claims)
        except Exception:  # noqa: BLE001 - fail closed, with a traceback
            return self.internal_error("revocation_check")
        return self._after_revocation(verdict, revoked)

    # -- responses ---------------------------------------------------------

    def challenge(self, verdict: Verdict) -> Challenge:
        """The RFC 6750 response for a denied verdict."""
        reason = verdict.reason or "internal_error"
        if verdict.required_scopes:
            return self._challenge(reason, verdict.required_scopes)
        if verdict.retry_after is not None:
            return self._retry_challenge(verdict.retry_after)
        return self._challenges[reason]

    def _retry_challenge(self, seconds: int) -> Challenge:
        """The ``locked_out`` challenge with ``Retry-After: seconds`` (one per value)."""
        challenge = self._retry_challenges.get(seconds)
        if challenge is None:
            base = self._challenges["locked_out"]
            headers = tuple(h for h in base.headers if h[0] != b"retry-after")
            challenge = Challenge(
                base.status, (*headers, (b"retry-after", str(seconds).encode())), base.body
            )
            if len(self._retry_challenges) < _MAX_SHARED_DENIALS:
                self._retry_challenges[seconds] = challenge
        return challenge

    def _challenge(self, reason: str, scopes: tuple[str, ...]) -> Challenge:
        spec = REASONS[reason]
        params = [f'realm="{self.settings.realm}"']
        if spec.error is not None:
            params.append(f'error="{spec.error}"')
            params.append(f'error_description="{spec.description}"')
        if scopes:
            params.append(f'scope="{" ".join(scopes)}"')
        body = json.dumps(
            {"error": spec.error or reason, "error_description": spec.description},
            separators=(",", ":"),
        ).encode()
        headers = [
            (b"www-authenticate", ("Bearer " + ", ".join(params)).encode("latin-1")),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if reason == "locked_out":
            headers.append((b"retry-after", b"60"))
        return Challenge(spec.status, tuple(headers), body)


_BEARER = ("Bearer ", "bearer ")
_KEY_REASONS = frozenset({"unknown_key", "key_unavailable"})
_REQUIRED_RULE: tuple[str, tuple[str, ...]] = (REQUIRED, ())
#: shared denial verdicts kept at most (their details are the verifier's fixed texts,
#: and whatever an app passes to deny_request)
_MAX_SHARED_DENIALS = 256
