"""Request policy: which paths need a token, which scopes, and the verdict.

``Gate.evaluate()`` is the one decision every adapter (ASGI, WSGI, Django,
Flask) calls: path and ``Authorization`` values in, a ``Verdict`` out.  The
revocation hook, the only step that may do I/O, is resolved separately by
``resolve_sync()`` / ``resolve_async()`` so each adapter can run it the way
its world requires; likewise a refetch of a JWKS URL for a token naming an
unknown key (``refresh_sync()`` / ``refresh_async()``).  Challenges (status,
headers, body) are built here once per reason at start-up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from hashlib import sha256 as _sha256
from typing import Any, Final

import anyio.to_thread
from asgiref.sync import async_to_sync

from .cache import TokenCache
from .errors import Denied
from .events import ALLOWED, DENIED, REASONS, WOULD_DENY, fingerprint_of_digest
from .jwks import KeyRequest
from .settings import Settings
from .verifier import VerifiedToken, Verifier

internal_logger = logging.getLogger("jwt_audit.internal")

EXEMPT: Final = "exempt"
OPTIONAL: Final = "optional"
REQUIRED: Final = "required"


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
    """Path prefixes matched on segment boundaries: ``/a`` matches ``/a``, ``/a/b``, not ``/ab``."""

    __slots__ = ("_exact", "_prefixes")

    def __init__(self, paths: tuple[str, ...]) -> None:
        stripped = [p.rstrip("/") for p in paths]
        self._exact = frozenset(p or "/" for p in stripped)
        # "/" names the root page only: as a prefix it would match every path
        self._prefixes = tuple(p + "/" for p in stripped if p)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path in self._exact or path.startswith(self._prefixes))


class PathPolicy:
    """Compiled ``exempt_paths``, ``optional_paths`` and ``path_scopes``.

    A path with dot segments or empty segments is first normalised the way a
    proxy or router might; it is never exempt or optional (a ``/health/../admin``
    trick cannot skip authentication) and needs the scopes of both forms.
    """

    def __init__(self, settings: Settings) -> None:
        self._exempt = _Prefixes(tuple(settings.exempt_paths))
        self.has_rules = bool(settings.exempt_paths or settings.optional_paths)
        self._optional = _Prefixes(tuple(settings.optional_paths))
        rules = sorted(settings.path_scopes.items(), key=lambda item: -len(item[0]))
        self._scopes = tuple((_Prefixes((prefix,)), tuple(scopes)) for prefix, scopes in rules)
        self.has_scopes = bool(rules)

    def kind(self, path: str) -> str:
        """``exempt``, ``optional`` or ``required``."""
        if not self.has_rules:
            return REQUIRED
        if normalise_path(path) != path:
            return REQUIRED
        if path in self._exempt:
            return EXEMPT
        if path in self._optional:
            return OPTIONAL
        return REQUIRED

    def required_scopes(self, path: str) -> tuple[str, ...]:
        """The scopes of the longest matching ``path_scopes`` prefix (of both forms)."""
        if not self.has_scopes:
            return ()
        required: dict[str, None] = {}
        for candidate in {path, normalise_path(path)}:
            for prefixes, scopes in self._scopes:
                if candidate in prefixes:
                    required.update(dict.fromkeys(scopes))
                    break
        return tuple(required)


@dataclass(slots=True)
class Verdict:
    """What to do with one request.

    ``allow`` says whether the app is called.  ``token`` is set when a token
    verified (also for a would-be ``insufficient_scope`` in report-only mode).
    ``claims`` carries verified claims for the event even on a denial that
    came after the signature check (``expired``, ``invalid_audience`` ...).
    """

    allow: bool
    outcome: str
    reason: str | None = None
    status: int | None = None
    detail: str | None = None
    token: VerifiedToken | None = None
    fingerprint: str | None = None
    alg: str | None = None
    kid: str | None = None
    claims: Mapping[str, Any] | None = None
    scopes: frozenset[str] = frozenset()
    required_scopes: tuple[str, ...] = ()
    path_kind: str = REQUIRED
    pending_revocation: bool = False
    pending_keys: KeyRequest | None = None
    """Set on an ``unknown_key``/``key_unavailable`` denial when refetching the
    token's JWKS URL may help: the adapter calls ``Gate.refresh_sync/async``."""
    event_base: dict[str, Any] | None = None
    """The request-independent part of this verdict's audit event, built once.

    Verdicts of cached tokens are shared by every request that presents the
    token; nothing may change them but the memos (this one filled by
    ``AuditLogger``).
    """
    sorted_scopes: tuple[str, ...] | None = None
    """Memo: the token's scopes in order, for Starlette's ``AuthCredentials``."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """An RFC 6750 error response: status, headers, JSON body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class Gate:
    """The single verification path shared by every adapter."""

    def __init__(self, settings: Settings, verifier: Verifier | None = None) -> None:
        self.settings = settings
        self.verifier = verifier or Verifier(settings)
        self.paths = PathPolicy(settings)
        self.report_only = settings.mode == "report-only"
        self.revocation_check = settings.revocation_check
        self.revocation_is_async = settings.revocation_is_async
        self.cache = TokenCache(settings.cache_size) if settings.cache_size else None
        self._leeway = float(settings.leeway)  # type: ignore[arg-type]  # normalised
        self._challenges = {reason: self._challenge(reason, ()) for reason in REASONS}
        self._exempt = Verdict(True, ALLOWED, path_kind=EXEMPT)
        self._anonymous = Verdict(True, ALLOWED, path_kind=OPTIONAL)

    # -- decisions ---------------------------------------------------------

    def evaluate(self, path: str, authorization: list[str]) -> Verdict:
        """Everything but the revocation hook: path rules, token, claims, scopes."""
        paths = self.paths
        kind = paths.kind(path)
        if kind == EXEMPT:
            return self._exempt
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
                    if kind == REQUIRED and not paths.has_scopes:
                        return cached  # what _allowed() returns without path rules
                    return self._allowed(cached, path, kind)
        try:
            token_text = self.verifier.token_from_headers(authorization)
        except Denied as denied:
            if kind == OPTIONAL and denied.reason in ("missing_token", "unsupported_scheme"):
                # no bearer token (perhaps credentials for another layer): anonymous
                return self._anonymous
            return self.deny(denied, None, kind)
        digest = _sha256(token_text.encode("ascii")).digest()
        print_ = fingerprint_of_digest(digest)
        now = self.verifier.clock()
        version = self.verifier.keys_version  # before verifying: a swap meanwhile is not missed
        try:
            token = self.verifier.verify(token_text, print_)
        except Denied as denied:
            verdict = self.deny(denied, print_, kind)
            if denied.reason in _KEY_REASONS:
                verdict.pending_keys = self.verifier.key_request(token_text)
            return verdict
        verdict = Verdict(
            True,
            ALLOWED,
            token=token,
            fingerprint=print_,
            alg=token.alg,
            kid=token.kid,
            claims=token.claims,
            scopes=token.scopes,
            pending_revocation=self.revocation_check is not None,
        )
        if cache is not None:
            # exp (+ leeway) bounds the entry; nbf and iat only grow more valid with time
            deadline = now + cache.ttl
            if token.expires_at is not None:
                deadline = min(deadline, token.expires_at + self._leeway)
            cache.put(digest, verdict, deadline, version)
        return self._allowed(verdict, path, kind)

    def _allowed(self, verdict: Verdict, path: str, kind: str) -> Verdict:
        """``verdict`` (a verified token on a required path) checked against ``path``."""
        token = verdict.token
        assert token is not None
        required = self.paths.required_scopes(path)
        if required and not token.scopes.issuperset(required):
            lacking = Denied(
                "insufficient_scope",
                "the token lacks a required scope",
                alg=verdict.alg,
                kid=verdict.kid,
                claims=token.claims,
                required_scopes=required,
            )
            return self.deny(lacking, verdict.fingerprint, kind, token=token)
        if kind != REQUIRED:
            return replace(verdict, path_kind=kind, event_base=None)
        return verdict

    def deny(
        self,
        denied: Denied,
        digest: str | None,
        kind: str = REQUIRED,
        token: VerifiedToken | None = None,
    ) -> Verdict:
        """The verdict for a denial, or a would-deny in report-only mode."""
        return Verdict(
            self.report_only,
            WOULD_DENY if self.report_only else DENIED,
            reason=denied.reason,
            status=REASONS[denied.reason].status,
            detail=denied.detail,
            token=token if self.report_only else None,
            fingerprint=digest,
            alg=denied.alg,
            kid=denied.kid,
            claims=denied.claims,
            scopes=self.verifier.scopes(denied.claims) if denied.claims else frozenset(),
            required_scopes=denied.required_scopes,
            path_kind=kind,
        )

    def late_denial(self, verdict: Verdict, denied: object) -> Verdict | None:
        """The verdict for a denial the app left with ``deny_request()``, if any."""
        if not isinstance(denied, Denied):
            return None
        token = verdict.token
        if token is None:  # anonymous (optional path): only "you need a token" makes sense
            if denied.reason != "missing_token":
                return None
            return self.deny(denied, None, verdict.path_kind)
        late = Denied(
            denied.reason,
            denied.detail,
            alg=token.alg,
            kid=token.kid,
            claims=token.claims,
            required_scopes=denied.required_scopes,
        )
        return self.deny(late, verdict.fingerprint, verdict.path_kind, token=token)

    def internal_error(self, where: str) -> Verdict:
        """Log the current exception on ``jwt_audit.internal``; fail closed."""
        internal_logger.error("jwt_audit: internal error in %s", where, exc_info=True)
        return self.deny(Denied("internal_error", "internal error"), None)

    def refresh_sync(self, verdict: Verdict, path: str, authorization: list[str]) -> Verdict:
        """Refetch keys for a ``pending_keys`` verdict, then decide again (WSGI).

        Blocks up to ``jwks_timeout``; every request waiting for the same key
        set shares one fetch.
        """
        request = verdict.pending_keys
        if request is None:
            return verdict
        request.source.refresh(request.kid)
        return self._evaluate_again(path, authorization)

    async def refresh_async(self, verdict: Verdict, path: str, authorization: list[str]) -> Verdict:
        """``refresh_sync()`` from an event loop: the fetch runs in a worker thread."""
        request = verdict.pending_keys
        if request is None:
            return verdict
        await anyio.to_thread.run_sync(request.source.refresh, request.kid)
        return self._evaluate_again(path, authorization)

    def _evaluate_again(self, path: str, authorization: list[str]) -> Verdict:
        verdict = self.evaluate(path, authorization)
        if verdict.pending_keys is not None:  # one refresh per request
            verdict.pending_keys = None
        return verdict

    def close(self) -> None:
        """Stop background work (the refresh threads of ``jwks_url`` key sets)."""
        self.verifier.close()

    def _after_revocation(self, verdict: Verdict, revoked: object) -> Verdict:
        if revoked is True or (revoked and not isinstance(revoked, bool)):
            denied = Denied(
                "revoked",
                "the token has been revoked",
                alg=verdict.alg,
                kid=verdict.kid,
                claims=verdict.claims,
            )
            return self.deny(denied, verdict.fingerprint, verdict.path_kind)
        return _replace_pending(verdict)

    def resolve_sync(self, verdict: Verdict) -> Verdict:
        """Run the revocation hook from synchronous code (WSGI)."""
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
        """Run the revocation hook from an event loop (ASGI).

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
        return self._challenges[reason]

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


def _replace_pending(verdict: Verdict) -> Verdict:
    return replace(verdict, pending_revocation=False, event_base=None)


_BEARER = ("Bearer ", "bearer ")
_KEY_REASONS = frozenset({"unknown_key", "key_unavailable"})
