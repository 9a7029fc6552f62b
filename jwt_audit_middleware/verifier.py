"""Token verification: Authorization header values in, ``VerifiedToken`` out.

This is the only module that runs PyJWT.  It is sans-I/O and synchronous: it
parses the compact JWS strictly itself (exactly three unpadded base64url
segments, UTF-8 JSON objects without duplicate members), checks the header
against the policy, verifies the signature with PyJWT's algorithm objects and
keys prepared at start-up, and validates the registered claims.  Every failure
is a ``Denied`` with one reason code of ``events.REASONS``; no message carries
token text or library error text.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from jwt import exceptions as jwt_errors

from .errors import Denied
from .events import copy_claims, identity_fields
from .jwks import EmitEvent, KeyRequest, RemoteKeySet, on_event_loop
from .keys import MAX_KID_LENGTH, KeyRing
from .settings import Settings, normalise_media_type

# Versions of static key rings: negative, so they never meet a RemoteKeySet's, and
# never reused (an id() of a freed ring can be, letting a cached verdict outlive its key).
_STATIC_VERSIONS = itertools.count(-1, -1)
_TOKEN = re.compile(r"[A-Za-z0-9_\-.]+")
_MAX_ALG_LENGTH = 32

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


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature and claims verified.

    Placed at ``scope["jwt_audit"]`` / ``environ["jwt_audit"]``.  It holds no
    token text: ``fingerprint`` identifies the token without revealing it.
    """

    claims: dict[str, Any]
    header: dict[str, Any]
    fingerprint: str
    scopes: frozenset[str] = frozenset()
    subject: str | None = None
    issuer: str | None = None
    token_id: str | None = None
    audience: tuple[str, ...] = ()
    expires_at: float | None = field(default=None, repr=False)
    identity: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The token's audit-event fields, cleaned once (served from the cache after that)."""

    @property
    def alg(self) -> str:
        """The JOSE ``alg`` the token was signed with."""
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        """The JOSE ``kid`` of the signing key, if the token named one."""
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def extract_token(values: Sequence[str], max_bytes: int) -> str:
    """The bearer token of an ``Authorization`` header (RFC 6750 §2.1).

    ``values`` are every ``Authorization`` header of the request.
    """
    if not values:
        raise Denied("missing_token", "no Authorization header")
    if len(values) > 1:
        raise Denied("invalid_request", "several Authorization headers")
    value = values[0]
    if len(value) > max_bytes + 64:
        raise Denied("token_too_large", "the Authorization header exceeds max_token_bytes")
    value = value.strip(" \t")
    if not value:
        raise Denied("invalid_request", "empty Authorization header")
    if value[:6].lower() != "bearer":
        raise Denied("unsupported_scheme", "the Authorization scheme is not Bearer")
    rest = value[6:]
    if not rest:
        raise Denied("invalid_request", "empty bearer token")
    if rest[0] != " ":
        if " " in rest:  # a longer scheme name such as "Bearers x"
            raise Denied("unsupported_scheme", "the Authorization scheme is not Bearer")
        raise Denied("invalid_request", "the scheme must be followed by one space")
    token = rest.lstrip(" ")
    if not token:
        raise Denied("invalid_request", "empty bearer token")
    if len(token) > max_bytes:
        raise Denied("token_too_large", "the token exceeds max_token_bytes")
    if not _TOKEN.fullmatch(token):
        raise Denied("invalid_request", "the token has characters outside base64url and '.'")
    return token


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _reject_constant(name: str) -> None:
    raise ValueError("NaN and Infinity are not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: no JSON line may carry "Infinity" later
        raise ValueError("number out of range")
    return value


_decode_json = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
).decode


class Claims(dict[str, Any]):
    """The verified claims: a ``dict`` that cannot be changed.

    A cached token's claims serve every request that presents the token, so
    an app that wrote into them would change what later requests (and the
    revocation hook) see.  It still serialises like a dict (``json``, FastAPI,
    Flask); ``dict(claims)`` gives a private, writable copy.
    """

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> Any:
        raise TypeError("verified claims are read-only; copy them with dict(claims)")

    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (Claims, (dict(self),))

    def __copy__(self) -> Claims:
        return self

    def __deepcopy__(self, memo: object) -> Claims:
        return self


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = _decode_json(_b64decode(segment).decode("utf-8"))
    except (ValueError, RecursionError, binascii.Error):
        raise Denied("malformed_token", f"the {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise Denied("malformed_token", f"the {what} is not a JSON object")
    return value


_MAX_TIME = 2**63


def _is_number(value: object) -> TypeGuard[float]:
    """A JSON number usable as a NumericDate: not a bool, finite, in range."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and -_MAX_TIME < value < _MAX_TIME  # also false for NaN
    )


@dataclass(slots=True)
class _Trust:
    """One trusted issuer's policy and key source (the whole config without ``providers``)."""

    algorithms: frozenset[str]
    issuers: frozenset[str]
    audiences: frozenset[str]
    static: KeyRing
    remote: RemoteKeySet | None = None


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
                )
            if not self._providers:
                self._default = self._trust(
                    settings.algorithms,
                    settings.issuer or (),
                    settings.audience,
                    settings.keyring,
                    settings.jwks_url,
                )
            if not on_event_loop():  # the start-up fetches run side by side
                for remote in self._remotes:
                    remote.wait_first_fetch(remote.timeout + 0.5)
        except BaseException:
            self.close()
            raise
        self._verifiers = settings.keyring.verifiers
        self._required = tuple(settings.required_claims)
        self._leeway = float(settings.leeway)  # type: ignore[arg-type]  # normalised
        self._token_type = settings.token_type
        self._max_bytes = settings.max_token_bytes
        self._scopes_claim = settings.scopes_claim
        self._log_claims = tuple(settings.log_claims)

    def _trust(
        self,
        algorithms: Sequence[str],
        issuers: Sequence[str] | str,
        audiences: Sequence[str] | str | None,
        static: KeyRing,
        jwks_url: str | None,
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

    def key_request(self, token: str) -> KeyRequest | None:
        """For a token denied ``unknown_key``/``key_unavailable``: a refetch that may help.

        ``None`` for static keys, or when the source would not fetch now
        (``jwks_min_refresh_seconds``, the negative cache of unknown kids).
        """
        if not self._remotes:
            return None
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            header = _json_object(parts[0], "header")
            alg, kid = self._header_fields(header)
            trust = self._default or self._select(_json_object(parts[1], "payload"), alg, kid)
        except Denied:
            return None
        remote = trust.remote
        if remote is None or not remote.may_refresh(kid):
            return None
        return KeyRequest(remote, kid)

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
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise Denied("malformed_token", "a JWS has three non-empty segments")
        header_b64, payload_b64, signature_b64 = parts
        header = _json_object(header_b64, "header")
        alg, kid = self._header_fields(header)
        trust = self._default
        claims: dict[str, Any] | None = None
        if trust is None:  # providers: the unverified iss picks whose keys and policy apply
            claims = _json_object(payload_b64, "payload")
            trust = self._select(claims, alg, kid)
        self._check_header(header, alg, kid, trust.algorithms)
        if trust.remote is None:
            ring = trust.static
        else:
            fetched = trust.remote.ring
            if fetched is None:
                raise Denied(
                    "key_unavailable", "no signing keys could be fetched yet", alg=alg, kid=kid
                )
            ring = fetched
        keys = ring.candidates(alg, kid)
        if not keys:
            raise Denied("unknown_key", "no key matches the token's kid", alg=alg, kid=kid)
        try:
            signature = _b64decode(signature_b64)
        except binascii.Error:
            raise Denied(
                "malformed_token", "the signature is not base64url", alg=alg, kid=kid
            ) from None
        if base64.urlsafe_b64encode(signature).rstrip(b"=") != signature_b64.encode():
            raise Denied(
                "malformed_token", "the signature is not canonical base64url", alg=alg, kid=kid
            )
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
        algorithm = self._verifiers[alg]
        for key in keys:
            try:
                if algorithm.verify(signing_input, key.key, signature):
                    break
            except Exception as exc:
                if reason_for(exc) is None:
                    raise
        else:
            raise Denied("bad_signature", "the signature does not verify", alg=alg, kid=kid)
        if claims is None:
            claims = _json_object(payload_b64, "payload")
        return self._check_claims(claims, header, alg, kid, fingerprint, trust=trust)

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

    def _check_header(
        self, header: dict[str, Any], alg: str, kid: str | None, algorithms: frozenset[str]
    ) -> None:
        if alg not in algorithms:
            raise Denied(
                "algorithm_not_allowed",
                "the token's alg is not allowed",
                alg=alg[:_MAX_ALG_LENGTH],
                kid=kid,
            )
        if "crit" in header:  # RFC 7515 §4.1.11: we implement no extension
            raise Denied(
                "malformed_token", "unsupported critical header parameter", alg=alg, kid=kid
            )
        if self._token_type is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or normalise_media_type(typ) != self._token_type:
                raise Denied("invalid_type", "the token's typ is not accepted", alg=alg, kid=kid)

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
        def deny(reason: str, detail: str) -> Denied:
            return Denied(reason, detail, alg=alg, kid=kid, claims=claims)

        for name in self._required:
            if claims.get(name) is None:  # a null claim is a missing claim
                raise deny("missing_claim", f"the token has no {name} claim")
        for name in ("iss", "sub", "jti"):
            if name in claims and not isinstance(claims[name], str):
                raise deny("malformed_token", f"the {name} claim is not a string")
        now = self.clock()
        leeway = self._leeway
        exp = claims.get("exp")
        if "exp" in claims:
            if not _is_number(exp):
                raise deny("malformed_token", "the exp claim is not a number")
            if exp <= now - leeway:
                raise deny("expired", "the token has expired")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if name in claims:
                if not _is_number(value):
                    raise deny("malformed_token", f"the {name} claim is not a number")
                if value > now + leeway:
                    raise deny("not_yet_valid", f"the token's {name} is in the future")
        issuer = claims.get("iss")
        if trust.issuers:
            if issuer is None:
                raise deny("missing_claim", "the token has no iss claim")
            if issuer not in trust.issuers:
                raise deny("invalid_issuer", "the token's issuer is not accepted")
        audience = claims.get("aud")
        audiences: tuple[str, ...] = ()
        if audience is not None:
            audiences = (
                (audience,)
                if isinstance(audience, str)
                else tuple(audience)
                if isinstance(audience, list)
                else ()
            )
            if not audiences or not all(isinstance(a, str) for a in audiences):
                raise deny("malformed_token", "the aud claim is not a string or a list of strings")
        if trust.audiences:
            if audience is None:
                raise deny("missing_claim", "the token has no aud claim")
            if trust.audiences.isdisjoint(audiences):
                raise deny("invalid_audience", "the token is not meant for this audience")
        elif audiences:  # RFC 7519 §4.1.3: an audience we are not in is a rejection
            raise deny("invalid_audience", "the token has an audience but none is configured")
        scopes = self.scopes(claims)
        identity = identity_fields(claims, scopes, alg, kid)
        # the logged claims are fixed now, from the verified token, once
        identity["claims"] = copy_claims(claims, self._log_claims)
        return VerifiedToken(
            claims=Claims(claims),
            header=header,
            fingerprint=fingerprint,
            scopes=scopes,
            subject=claims.get("sub"),
            issuer=issuer,
            token_id=claims.get("jti"),
            audience=audiences,
            expires_at=float(exp) if exp is not None else None,
            identity=identity,
        )

    def scopes(self, claims: Mapping[str, Any]) -> frozenset[str]:
        """The token's scopes: ``scopes_claim``, else ``scope`` (space-separated) and ``scp``."""
        names = (self._scopes_claim,) if self._scopes_claim else ("scope", "scp")
        scopes: set[str] = set()
        for name in names:
            value = claims.get(name)
            if isinstance(value, str):
                scopes.update(value.split())
            elif isinstance(value, list):
                scopes.update(v for v in value if isinstance(v, str))
        return frozenset(scopes)
