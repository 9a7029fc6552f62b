"""Token verification: Authorization header values in, ``VerifiedToken`` out.

It is sans-I/O and synchronous: it reads the compact JWS strictly (``jws``:
exactly three unpadded base64url segments, a canonical signature, UTF-8 JSON
objects without duplicate members or non-finite numbers), checks the header
against the policy, verifies the signature with the checks each key bound at
start-up (``keys.bind_check``: PyJWT's algorithms, cryptography's maths), and
validates the registered claims, one small check per claim.  Every failure is a
``Denied`` with one reason code of ``events.REASONS``; no message carries token
text or library error text.

A first-seen token is the cost that matters here (a repeated one is a cache
hit upstream): the path does each step once, with few calls and objects, and
keeps only what tokens of one issuer share (their decoded header).
"""

from __future__ import annotations

import datetime
import functools
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from cryptography.exceptions import InvalidSignature
from jwt import exceptions as jwt_errors

from . import jws
from .errors import Denied
from .events import copy_claims, scope_fields, verified_identity
from .jwks import EmitEvent, RemoteKeySet, on_event_loop
from .keys import MAX_KID_LENGTH, KeyRing
from .model import Claims, VerifiedToken
from .settings import IdentityFunction, Settings, identity_resolver, normalise_media_type

#: the parsing's names from before it moved to jws.py (issue 11), still importable here
extract_token = jws.extract_token
_b64decode = jws.b64decode
_signature_bytes = jws.signature_bytes
_decode_json = jws.decode_json
_json_object = jws.json_object

# Versions of static key rings: negative, so they never meet a RemoteKeySet's, and
# never reused (an id() of a freed ring can be, letting a cached verdict outlive its key).
_STATIC_VERSIONS = itertools.count(-1, -1)
_MAX_ALG_LENGTH = 32
#: decoded headers kept (Verifier._remember_header), and the longest header text kept
_MAX_HEADERS = 64
_MAX_HEADER_TEXT = 512
#: scope claims kept (Verifier._remember_scopes), and the longest kept
_MAX_SCOPE_SETS = 64
_MAX_SCOPE_TEXT = 1024

#: PyJWT's exceptions, each mapped to exactly one reason (most specific first
#: through the exception's MRO).  Only ``reason_for()`` reads it.
PYJWT_REASONS: Mapping[type[Exception], str] = {
    jwt_errors.ExpiredSignatureError: "expired",
    jwt_errors.ImmatureSignatureError: "not_yet_valid",
    jwt_errors.InvalidIssuedAtError: "malformed_token",
    jwt_errors.InvalidAudienceError: "invalid_audience",
    jwt_errors.InvalidIssuerError: "invalid_issuer",
    jwt_errors.MissingRequiredClaimError: "missing_claim",
    jwt_errors.InvalidSubjectError: "malformed_token",
    jwt_errors.InvalidJTIError: "malformed_token",
    jwt_errors.InvalidAlgorithmError: "algorithm_not_allowed",
    jwt_errors.InvalidSignatureError: "bad_signature",
    jwt_errors.InvalidKeyError: "unknown_key",
    jwt_errors.PyJWKClientConnectionError: "key_unavailable",
    jwt_errors.PyJWKClientError: "unknown_key",
    jwt_errors.PyJWKError: "unknown_key",
    jwt_errors.DecodeError: "malformed_token",
    jwt_errors.InvalidTokenError: "malformed_token",
    InvalidSignature: "bad_signature",
}


def reason_for(exc: BaseException) -> str | None:
    """The reason code for a PyJWT (or signature) exception, else ``None``."""
    for cls in type(exc).__mro__:
        reason = PYJWT_REASONS.get(cls)
        if reason is not None:
            return reason
    return None


class _NewVerifiedToken:
    """Builds a ``VerifiedToken``: the same slots, set without the frozen __init__.

    A frozen dataclass's __init__ sets each field through ``object.__setattr__``
    (a generic attribute look-up per field, a third of a microsecond each here);
    the verifier makes one per first-seen token.  This class has VerifiedToken's
    exact slot layout, so its plain assignments are cheap, and then becomes a
    VerifiedToken (``__class__`` assignment between identical layouts), frozen
    from there on.  Positional, in field order; a test checks it equals the
    dataclass's own constructor.
    """

    __slots__ = VerifiedToken.__slots__

    def __init__(  # noqa: PLR0917 - positional: the verifier builds one per token
        self,
        claims: dict[str, Any],
        header: dict[str, Any],
        fingerprint: str,
        scopes: frozenset[str],
        subject: str | None,
        issuer: str | None,
        token_id: str | None,
        audience: tuple[str, ...],
        expires_at: float | None,
        event_fields: Mapping[str, Any],
        identity: str | None,
    ) -> None:
        self.claims = claims
        self.header = header
        self.fingerprint = fingerprint
        self.scopes = scopes
        self.subject = subject
        self.issuer = issuer
        self.token_id = token_id
        self.audience = audience
        self.expires_at = expires_at
        self.event_fields = event_fields
        self.identity = identity
        self.__class__ = VerifiedToken  # type: ignore[assignment]


assert _NewVerifiedToken.__slots__ == tuple(f.name for f in fields(VerifiedToken))


@dataclass(slots=True)
class _Trust:
    """One trusted issuer's policy and key source (the whole config without ``providers``)."""

    algorithms: frozenset[str]
    issuers: frozenset[str]
    audiences: frozenset[str]
    static: KeyRing
    identity: IdentityFunction
    remote: RemoteKeySet | None = None


def _check_signature(
    trust: _Trust, token: str, signature_b64: str, alg: str, kid: str | None
) -> None:
    """A key of ``trust`` that may have signed the token accepts its signature.

    The keys are the static ring or the latest fetched one, narrowed by alg and
    kid; the signature must be canonical base64url before any key sees it.
    """
    remote = trust.remote
    ring = trust.static if remote is None else remote.ring
    if ring is None:
        raise Denied("key_unavailable", "no signing keys could be fetched yet", alg=alg, kid=kid)
    checks = ring.checks(alg, kid)
    if not checks:
        raise Denied("unknown_key", "no key matches the token's kid", alg=alg, kid=kid)
    try:
        signature = jws.signature_bytes(signature_b64)
    except ValueError:
        signature = None
    if signature is None:
        raise Denied(
            "malformed_token", "the signature is not canonical base64url", alg=alg, kid=kid
        )
    try:  # the signing input: header "." payload, all before the signature's dot
        signing_input = token[: len(token) - len(signature_b64) - 1].encode("ascii")
    except UnicodeEncodeError:  # the header decoded: it is the payload
        raise Denied("malformed_token", "the payload is not base64url", alg=alg, kid=kid) from None
    for check in checks:
        try:
            if check(signature, signing_input):
                return
        except Exception as exc:
            if reason_for(exc) is None:
                raise
    raise Denied("bad_signature", "the signature does not verify", alg=alg, kid=kid)


#: Half the order n of each ECDSA curve: (r, s) verifies as (r, n - s) too, so a
#: signature with s > n / 2 is the second text of a token (ecdsa_low_s refuses it)
_ECDSA_HALF_ORDERS = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551 // 2,
    "ES256K": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2,
    "ES384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973",
        16,
    )
    // 2,
    "ES512": int(
        "1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "A51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    )
    // 2,
}


def _high_s(signature_b64: str, alg: str) -> bool:
    """Whether a JWS ECDSA signature (r || s, RFC 7518 §3.4) has s above n / 2."""
    signature = jws.signature_bytes(signature_b64)  # canonical: checked a moment ago
    if not signature:
        return False
    half = len(signature) // 2
    return int.from_bytes(signature[half:], "big") > _ECDSA_HALF_ORDERS[alg]


# -- the claims: one check each, as PyJWT's _validate_* ----------------------------
#
# Each raises a Denied with its reason and detail only; Verifier._check_claims runs
# them in order and adds what every claim denial carries (alg, kid, the claims).
# The claims are the JSON decoder's, so exact type tests are isinstance tests here.

#: NumericDates: JSON numbers (the decoder makes exactly these types, all finite; bool
#: is not one) between _MIN_TIME and _MAX_TIME (float() of a longer int can overflow)
_NUMBER = frozenset((int, float))
_MAX_TIME = 2**63
_MIN_TIME = -_MAX_TIME
_STRING_CLAIMS = ("iss", "sub", "jti")


def _check_required(claims: dict[str, Any], required: tuple[str, ...]) -> None:
    """Each ``required_claims`` claim is present; a null claim is a missing claim."""
    for name in required:
        if claims.get(name) is None:
            raise Denied("missing_claim", f"the token has no {name} claim")


def _check_strings(claims: dict[str, Any]) -> None:
    """``iss``, ``sub`` and ``jti``, where present (null included), are strings."""
    for name in _STRING_CLAIMS:
        if type(claims.get(name)) is not str and name in claims:
            raise Denied("malformed_token", f"the {name} claim is not a string")


def _check_exp(claims: dict[str, Any], now: float, leeway: float) -> None:
    """``exp``, where present (null included), is a NumericDate that has not passed."""
    exp: Any = claims.get("exp")
    if exp is None and "exp" not in claims:
        return
    if type(exp) not in _NUMBER or not _MIN_TIME < exp < _MAX_TIME:
        raise Denied("malformed_token", "the exp claim is not a number")
    if exp <= now - leeway:
        raise Denied("expired", "the token has expired")


def _check_nbf_iat(claims: dict[str, Any], now: float, leeway: float) -> None:
    """``nbf`` and ``iat``, where present (null included), are NumericDates not to come."""
    latest = now + leeway
    for name in ("nbf", "iat"):
        stamp: Any = claims.get(name)
        if stamp is None and name not in claims:
            continue
        if type(stamp) not in _NUMBER or not _MIN_TIME < stamp < _MAX_TIME:
            raise Denied("malformed_token", f"the {name} claim is not a number")
        if stamp > latest:
            raise Denied("not_yet_valid", f"the token's {name} is in the future")


def _check_issuer(issuer: str | None, accepted: frozenset[str]) -> None:
    """With ``issuer`` configured, ``iss`` is one of the accepted issuers."""
    if not accepted:
        return
    if issuer is None:
        raise Denied("missing_claim", "the token has no iss claim")
    if issuer not in accepted:
        raise Denied("invalid_issuer", "the token's issuer is not accepted")


def _check_audience(audience: object, accepted: frozenset[str]) -> tuple[str, ...]:
    """``aud`` names a configured ``audience`` (RFC 7519 §4.1.3); its audiences as a tuple.

    ``aud`` is a string or a non-empty list of strings; absent (or null) it is
    required when ``audience`` is configured, and present it must name one of
    them: an audience we are not in is a rejection, with none configured too.
    """
    if audience is None:
        if accepted:
            raise Denied("missing_claim", "the token has no aud claim")
        return ()
    if type(audience) is str:
        audiences: tuple[str, ...] = (audience,)
    elif type(audience) is list:
        audiences = tuple(audience)
        for item in audiences:
            if type(item) is not str:
                audiences = ()
                break
    else:
        audiences = ()
    if not audiences:  # neither a string nor a non-empty list of strings
        raise Denied("malformed_token", "the aud claim is not a string or a list of strings")
    if not accepted:
        raise Denied("invalid_audience", "the token has an audience but none is configured")
    if accepted.isdisjoint(audiences):
        raise Denied("invalid_audience", "the token is not meant for this audience")
    return audiences


def _identity(resolve: IdentityFunction, claims: Mapping[str, Any]) -> str | None:
    """The token's identity; a callable's other answers are a bug (an internal error)."""
    identity = resolve(claims)
    if identity is not None and not isinstance(identity, str):
        raise TypeError("the identity callable must return a str or None")
    return identity or None


def _seconds(value: float | datetime.timedelta) -> float:
    return value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)


class Verifier:
    """Verifies compact JWS tokens against a ``Settings`` policy.

    Everything that can be prepared is prepared here, once: the key ring,
    the algorithm objects, the issuer and audience sets.  A ``jwks_url`` (top
    level or of a provider) becomes a ``RemoteKeySet``, whose thread starts
    here; ``close()`` stops it.  With ``providers``, the token's ``iss`` (read
    before the signature is checked, trusted only after) picks the policy and
    the keys; an unknown issuer is ``invalid_issuer``.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        *,
        key_events: EmitEvent | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._remotes: list[RemoteKeySet] = []
        self._key_events = key_events
        self._providers: dict[str, _Trust] = {}
        self._default: _Trust | None = None
        self._static_version = next(_STATIC_VERSIONS)
        try:
            for provider in settings.trusted_providers:
                self._providers[provider.issuer] = self._trust(
                    provider.algorithms,
                    (provider.issuer,),
                    provider.audience,
                    provider.keyring,
                    provider.jwks_url,
                    identity=settings.identity if provider.identity is None else provider.identity,
                )
            if not self._providers:
                self._default = self._trust(
                    settings.algorithms,
                    settings.issuer or (),
                    settings.audience,
                    settings.keyring,
                    settings.jwks_url,
                    identity=settings.identity,
                )
            if not on_event_loop():  # the start-up fetches run side by side
                for remote in self._remotes:
                    remote.wait_first_fetch(remote.timeout + 0.5)
        except BaseException:
            self.close()
            raise
        self._required = tuple(settings.required_claims)
        self._leeway = settings.leeway_seconds
        self._low_s = settings.ecdsa_low_s
        self._token_type = settings.token_type
        self._max_bytes = settings.max_token_bytes
        self._scopes_claim = settings.scopes_claim
        self._scope_names = (settings.scopes_claim,) if settings.scopes_claim else ("scope", "scp")
        self._log_claims = tuple(settings.log_claims)
        #: decoded headers by their base64url text (see _remember_header)
        self._headers: dict[str, tuple[dict[str, Any], str, str | None]] = {}
        #: scope claims' scopes and event field, by the claim's text (_remember_scopes)
        self._scope_sets: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {}

    def _trust(
        self,
        algorithms: Sequence[str],
        issuers: Sequence[str] | str,
        audiences: Sequence[str] | str | None,
        static: KeyRing,
        jwks_url: str | None,
        *,
        identity: object,
    ) -> _Trust:
        remote = None
        if jwks_url is not None:
            settings = self.settings
            remote = RemoteKeySet(
                jwks_url,
                algorithms,
                timeout=_seconds(settings.jwks_timeout),
                cache_seconds=_seconds(settings.jwks_cache_seconds),
                min_refresh_seconds=_seconds(settings.jwks_min_refresh_seconds),
                issuer=issuers[0] if self.settings.trusted_providers else None,
                emit=self._key_events,
                wait=False,
            )
            self._remotes.append(remote)
        return _Trust(
            frozenset(algorithms),
            frozenset((issuers,) if isinstance(issuers, str) else issuers),
            frozenset((audiences,) if isinstance(audiences, str) else audiences or ()),
            static,
            identity_resolver("identity", identity),
            remote,
        )

    # -- key sources ---------------------------------------------------------

    @property
    def keyring(self) -> KeyRing:
        """The keys being served (single key source; empty with ``providers``).

        For a ``jwks_url`` this is the latest fetched snapshot, or an empty
        ring until the first fetch succeeds.  Assigning replaces static keys.
        """
        trust = self._default
        if trust is None:
            return self.settings.keyring
        if trust.remote is None:
            return trust.static
        ring = trust.remote.ring
        return trust.static if ring is None else ring

    @keyring.setter
    def keyring(self, ring: KeyRing) -> None:
        if self._default is None or self._default.remote is not None:
            raise AttributeError("only static keys can be replaced")
        self._default.static = ring
        self._static_version = next(_STATIC_VERSIONS)

    @property
    def keys_version(self) -> int:
        """Changes whenever the keys in use change (the verdict cache keys on it)."""
        trust = self._default
        if trust is not None:
            return self._static_version if trust.remote is None else trust.remote.version
        remotes = self._remotes
        if not remotes:
            return 0
        return max(remote.version for remote in remotes)

    @property
    def remote_key_sets(self) -> tuple[RemoteKeySet, ...]:
        """The ``jwks_url`` key sources (empty for static keys)."""
        return tuple(self._remotes)

    def key_request(self, token: str) -> Callable[[], object] | None:
        """For a token denied ``unknown_key``/``key_unavailable``: a refetch that may help.

        A blocking call (run it in a thread from an event loop); every request
        waiting for the same key set shares one fetch.  ``None`` for static
        keys, or when the source would not fetch now (``jwks_min_refresh_seconds``,
        the negative cache of unknown kids).
        """
        if not self._remotes:
            return None
        try:
            header_b64, payload_b64, _ = jws.split(token)
            alg, kid = self._header_fields(jws.json_object(header_b64, "header"))
            trust = self._default or self._select(jws.json_object(payload_b64, "payload"), alg, kid)
        except Denied:
            return None
        remote = trust.remote
        if remote is None or not remote.may_refresh(kid):
            return None
        return functools.partial(remote.refresh, kid)

    def close(self) -> None:
        """Stop the background refresh of every ``jwks_url`` (the keys held keep serving)."""
        for remote in self._remotes:
            remote.close()

    def token_from_headers(self, values: Sequence[str]) -> str:
        """``extract_token`` with this policy's ``max_token_bytes``."""
        return extract_token(values, self._max_bytes)

    def verify(self, token: str, fingerprint: str) -> VerifiedToken:
        """Verify ``token`` (already extracted); raise ``Denied`` on any doubt."""
        if len(token) > self._max_bytes:
            raise Denied("token_too_large", "the token exceeds max_token_bytes")
        header_b64, payload_b64, signature_b64 = jws.split(token)
        cached = self._headers.get(header_b64)
        if cached is None:
            header = jws.json_object(header_b64, "header")
            alg, kid = self._header_fields(header)
            self._remember_header(header_b64, header, alg, kid)
        else:  # the text decoded to this before; checked against the policy as ever below
            header, alg, kid = cached
        trust = self._default
        claims: dict[str, Any] | None = None
        if trust is None:  # providers: the unverified iss picks whose keys and policy apply
            claims = jws.json_object(payload_b64, "payload")
            trust = self._select(claims, alg, kid)
        if alg not in trust.algorithms:
            raise Denied(
                "algorithm_not_allowed",
                "the token's alg is not allowed",
                alg=alg[:_MAX_ALG_LENGTH],
                kid=kid,
            )
        if not signature_b64:  # an allowed alg, yet unsigned
            raise Denied("malformed_token", "the token has no signature", alg=alg, kid=kid)
        if "crit" in header:  # RFC 7515 §4.1.11: we implement no extension
            raise Denied(
                "malformed_token", "unsupported critical header parameter", alg=alg, kid=kid
            )
        if self._token_type is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or normalise_media_type(typ) != self._token_type:
                raise Denied("invalid_type", "the token's typ is not accepted", alg=alg, kid=kid)
        _check_signature(trust, token, signature_b64, alg, kid)
        if self._low_s and alg in _ECDSA_HALF_ORDERS and _high_s(signature_b64, alg):
            raise Denied("bad_signature", "a high-S ECDSA signature", alg=alg, kid=kid)
        if claims is None:
            claims = jws.json_object(payload_b64, "payload")
        return self._check_claims(claims, header, alg, kid, fingerprint, trust=trust)

    def _check_claims(
        self,
        claims: dict[str, Any],
        header: dict[str, Any],
        alg: str,
        kid: str | None,
        fingerprint: str,
        *,
        trust: _Trust,
    ) -> VerifiedToken:
        """The claims of a verified token, checked one by one, then its VerifiedToken."""
        try:
            _check_required(claims, self._required)
            _check_strings(claims)
            now = self.clock()
            _check_exp(claims, now, self._leeway)
            _check_nbf_iat(claims, now, self._leeway)
            _check_issuer(claims.get("iss"), trust.issuers)
            audiences = _check_audience(claims.get("aud"), trust.audiences)
        except Denied as denied:  # the signature verified: the event may show who it was
            denied.alg, denied.kid, denied.claims = alg, kid, claims
            raise
        get = claims.get
        subject, issuer, token_id, exp = get("sub"), get("iss"), get("jti"), get("exp")
        scopes, scope_list = self._scopes_and_fields(claims)
        event_fields = verified_identity(subject, issuer, token_id, audiences, scope_list, alg, kid)
        # the logged claims are fixed now, from the verified token, once
        log_claims = self._log_claims
        event_fields["claims"] = copy_claims(claims, log_claims) if log_claims else {}
        frozen = Claims(claims)
        return _NewVerifiedToken(  # type: ignore[return-value]  # it is a VerifiedToken now
            frozen,
            dict(header),  # its own copy: a decoded header is kept for the next token
            fingerprint,
            scopes,
            subject,
            issuer,
            token_id,
            audiences,
            None if exp is None else float(exp),
            event_fields,
            _identity(trust.identity, frozen),
        )

    def _scopes_and_fields(self, claims: dict[str, Any]) -> tuple[frozenset[str], list[str]]:
        """``scopes()`` and the event's ``scopes`` field (a list of its own per token).

        The common case (a ``scope`` string and no ``scp``) comes from a memo:
        an issuer's tokens carry a few scope strings, each split and cleaned once.
        """
        scope = claims.get("scope")
        if self._scopes_claim is None and type(scope) is str and claims.get("scp") is None:
            known = self._scope_sets.get(scope)
            if known is None:
                known = self._remember_scopes(scope)
            scopes, fields = known
            return scopes, [*fields]
        scopes = self.scopes(claims)
        return scopes, scope_fields(scopes)

    def _remember_header(
        self, text: str, header: dict[str, Any], alg: str, kid: str | None
    ) -> None:
        """Keep a decoded header: an issuer's tokens share one (alg, kid, typ).

        Only small headers whose values are all strings (so a shallow copy,
        which each VerifiedToken gets, shares nothing mutable); at most
        ``_MAX_HEADERS``, emptied when full, so no input makes it grow.
        """
        if len(text) > _MAX_HEADER_TEXT:
            return
        for value in header.values():
            if type(value) is not str:
                return
        headers = self._headers
        if len(headers) >= _MAX_HEADERS:
            headers.clear()
        headers[text] = (header, alg, kid)

    def _remember_scopes(self, scope: str) -> tuple[frozenset[str], tuple[str, ...]]:
        """The scopes of a ``scope`` claim and their event field, kept like headers."""
        scopes = frozenset(scope.split())
        known = (scopes, tuple(scope_fields(scopes)))
        if len(scope) <= _MAX_SCOPE_TEXT:
            scope_sets = self._scope_sets
            if len(scope_sets) >= _MAX_SCOPE_SETS:
                scope_sets.clear()
            scope_sets[scope] = known
        return known

    def _select(self, claims: Mapping[str, Any], alg: str, kid: str | None) -> _Trust:
        issuer = claims.get("iss")
        alg = alg[:_MAX_ALG_LENGTH]
        if issuer is None:
            raise Denied("missing_claim", "the token has no iss claim", alg=alg, kid=kid)
        if not isinstance(issuer, str):
            raise Denied("malformed_token", "the iss claim is not a string", alg=alg, kid=kid)
        trust = self._providers.get(issuer)
        if trust is None:
            raise Denied(
                "invalid_issuer",
                "the token's issuer is not a configured provider",
                alg=alg,
                kid=kid,
            )
        return trust

    @staticmethod
    def _header_fields(header: dict[str, Any]) -> tuple[str, str | None]:
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Denied("malformed_token", "the header has no alg")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
            raise Denied("malformed_token", "the header's kid is not a short string")
        return alg, kid

    def scopes(self, claims: Mapping[str, Any]) -> frozenset[str]:
        """The token's scopes: ``scopes_claim``, else ``scope`` (space-separated) and ``scp``."""
        found: list[str] = []
        for name in self._scope_names:
            value = claims.get(name)
            if value is None:
                continue
            if isinstance(value, str):
                found += value.split()
            elif isinstance(value, list):
                found += [v for v in value if isinstance(v, str)]
        return frozenset(found)
