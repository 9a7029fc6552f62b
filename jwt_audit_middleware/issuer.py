"""``TokenIssuer``: mint tokens for apps that issue their own, and audit each one.

Every token issued emits a ``token_issued`` event (subject, ``jti``, expiry,
fingerprint), so the audit trail can follow a token from its issuance through
every request that presents it.  The event never holds the token.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .audit import AuditLogger
from .errors import ConfigurationError
from .events import fingerprint, rfc3339
from .keys import (
    MAX_KID_LENGTH,
    SUPPORTED_ALGORITHMS,
    algorithms_for_key,
    build_keyring,
    is_hmac,
)

#: Claims the issuer sets itself; ``issue(claims=...)`` may not override them.
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "exp", "jti"})

#: The default ``max_lifetime``, in seconds: one day.
DEFAULT_MAX_LIFETIME = 86_400

_T = TypeVar("_T")

# RFC 6749 section 3.3 scope-token: printable ASCII but space, '"' and '\'
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")

internal_logger = logging.getLogger("jwt_audit.internal")


def _read(option: str, path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigurationError(option, f"cannot read the file ({exc.strerror})") from None


def _refuse_unused(algorithm: str, needs: str, **unused: object) -> None:
    """Key material of the other family is a mistake, not something to ignore."""
    for option, value in unused.items():
        if value is not None:
            raise ConfigurationError(
                option, f"{algorithm} signs with {needs}: refused rather than ignored"
            )


def _checked(
    fail: Callable[[str, str], ValueError], option: str, check: Callable[..., _T], *args: Any
) -> _T:
    """``check(*args)``, its ``ValueError`` raised again as ``fail(option, message)``.

    One check serves both times a value can arrive: ``ConfigurationError`` at
    construction, a plain ``ValueError`` naming the argument in ``issue()``.
    """
    try:
        return check(*args)
    except ValueError as exc:
        raise fail(option, str(exc)) from None


def _argument_error(argument: str, message: str) -> ValueError:
    return ValueError(f"{argument}: {message}")


def _optional_name(value: object, limit: int = 2048) -> str | None:
    if value is None or (isinstance(value, str) and 0 < len(value) <= limit):
        return value
    raise ValueError(f"expected a non-empty string (at most {limit} characters)")


def _optional_audience(value: object) -> str | tuple[str, ...] | None:
    if value is None or (isinstance(value, str) and value):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        items = tuple(value)
        if items and all(isinstance(item, str) and item for item in items):
            return items
    raise ValueError("expected a non-empty string or a non-empty list of non-empty strings")


def _scope(value: object) -> str | None:
    """One space-separated ``scope`` claim from a string or a list; ``None`` when empty."""
    if isinstance(value, str):
        scopes: list[Any] = value.split()
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        scopes = list(value)
    else:
        raise ValueError("expected a space-separated string or a list of strings")
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
            raise ValueError(
                f"{str(scope)[:64]!r} is not a scope (RFC 6749: printable ASCII,"
                " no space, quote or backslash)"
            )
    return " ".join(scopes) or None


def _extra_claims(claims: object) -> dict[str, Any]:
    """The app's own claims, each one checked to encode as JSON (as PyJWT will)."""
    if claims is None:
        return {}
    if not isinstance(claims, Mapping):
        raise ValueError("claims: expected a mapping of claim names to JSON values")
    extra = dict(claims)
    if not all(isinstance(name, str) for name in extra):
        raise ValueError("claims: claim names must be strings")
    clash = RESERVED_CLAIMS.intersection(extra)
    if clash:
        raise ValueError(f"claims set by the issuer itself: {sorted(clash)}")
    for name, value in extra.items():
        if name == "scope" or (name == "nbf" and isinstance(value, datetime.datetime)):
            continue  # a scope is checked as one; PyJWT turns a datetime nbf into a NumericDate
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise ValueError(f"claims: {name[:64]!r} is not a JSON value") from None
    return extra


def _whole_seconds(value: object, maximum: float = 1e9) -> int:
    """A lifetime in whole seconds (``exp`` is one), rounded up, from 1 to ``maximum``.

    Rounding down could make a token expired at birth; under one second is
    refused, since rounding it up would grant many times what was asked.
    """
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value < 1e9:
        raise ValueError("expected a number of seconds (or a timedelta), at least 1")
    seconds = math.ceil(value)
    if seconds > maximum:
        raise ValueError(f"{seconds} s is more than max_lifetime ({maximum} s)")
    return seconds


class TokenIssuer:
    """Issues signed JWTs with a configured key and audits every issuance.

    ``algorithm`` with ``secret``/``secret_file`` (HMAC) or
    ``private_key``/``private_key_file`` (PEM, for RS/PS/ES/EdDSA).  Each token
    carries ``iss`` (if ``issuer``), ``sub``, ``aud`` (if an audience), ``iat``,
    ``exp`` (``iat`` + ``lifetime`` seconds), a random ``jti`` and the JOSE
    ``typ`` header ``token_type`` (``"at+jwt"`` for RFC 9068 access tokens).
    ``lifetime`` (seconds or a ``timedelta``; default 15 minutes) is rounded up
    to whole seconds, must be at least 1 s and at most ``max_lifetime``
    (default one day), which also caps ``issue(lifetime=...)``.
    Invalid configuration raises ``ConfigurationError`` here, naming the option
    and never showing a secret or key; key material of the other family (a
    ``secret`` for RS256, a ``private_key`` for HS256) is refused, not ignored.

    >>> issuer = TokenIssuer(algorithm="HS256", secret=key, issuer="https://me/", audience="api")
    >>> token = issuer.issue("alice", scope="orders:read", client_ip="192.0.2.1")
    """

    def __init__(
        self,
        *,
        algorithm: str,
        secret: str | bytes | None = None,
        secret_file: str | os.PathLike[str] | None = None,
        private_key: str | bytes | None = None,
        private_key_file: str | os.PathLike[str] | None = None,
        kid: str | None = None,
        issuer: str | None = None,
        audience: str | Sequence[str] | None = None,
        lifetime: float | datetime.timedelta = 900,
        max_lifetime: float | datetime.timedelta = DEFAULT_MAX_LIFETIME,
        token_type: str | None = "JWT",  # noqa: S107 - the JOSE typ, not a secret
        audit: AuditLogger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(algorithm, str) or algorithm not in SUPPORTED_ALGORITHMS:
            # not echoed: a key pasted into the wrong argument must not reach a log
            known = ", ".join(sorted(SUPPORTED_ALGORITHMS))
            raise ConfigurationError("algorithm", f"not a signing algorithm (one of {known})")
        self.algorithm = algorithm
        fail = ConfigurationError
        self.kid = _checked(fail, "kid", _optional_name, kid, MAX_KID_LENGTH)
        self.issuer = _checked(fail, "issuer", _optional_name, issuer)
        self.audience = _checked(fail, "audience", _optional_audience, audience)
        self.max_lifetime = _checked(fail, "max_lifetime", _whole_seconds, max_lifetime)
        self.lifetime = _checked(fail, "lifetime", _whole_seconds, lifetime, self.max_lifetime)
        self.token_type = _checked(fail, "token_type", _optional_name, token_type, 255)
        if not callable(clock):
            raise ConfigurationError("clock", "expected a function returning the time in seconds")
        self.audit = audit or AuditLogger()
        self.clock = clock
        self._public_pem: str | None = None
        if is_hmac(algorithm):
            _refuse_unused(
                algorithm, "a secret", private_key=private_key, private_key_file=private_key_file
            )
            self._key: Any = self._hmac_key(secret, secret_file)
        else:
            _refuse_unused(algorithm, "a private key", secret=secret, secret_file=secret_file)
            self._key = self._private_key(private_key, private_key_file)

    def _hmac_key(
        self, secret: str | bytes | None, secret_file: str | os.PathLike[str] | None
    ) -> bytes:
        if secret_file is not None:
            if secret is not None:
                raise ConfigurationError("secret_file", "give either secret or secret_file")
            secret = _read("secret_file", secret_file).removesuffix(b"\n").removesuffix(b"\r")
        if secret is None:
            raise ConfigurationError("secret", f"{self.algorithm} needs an HMAC secret")
        key = secret.encode() if isinstance(secret, str) else secret
        build_keyring((self.algorithm,), secret=key)  # length and shape checks, as for verifying
        return key

    def _private_key(
        self, private_key: str | bytes | None, private_key_file: str | os.PathLike[str] | None
    ) -> Any:
        option = "private_key"
        if private_key_file is not None:
            if private_key is not None:
                raise ConfigurationError("private_key_file", "give either private_key or the file")
            option, private_key = "private_key_file", _read("private_key_file", private_key_file)
        if private_key is None:
            raise ConfigurationError("private_key", f"{self.algorithm} needs a private key (PEM)")
        data = private_key.encode() if isinstance(private_key, str) else private_key
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigurationError(option, "not an unencrypted PEM private key") from None
        public = key.public_key()
        if not algorithms_for_key(public, (self.algorithm,)):
            raise ConfigurationError(option, f"this key cannot sign {self.algorithm}")
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
            raise ConfigurationError(option, "RSA keys need at least 2048 bits")
        self._public_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        return key

    def verify_options(self, **extra: Any) -> dict[str, Any]:
        """Middleware options that accept this issuer's tokens (``Settings(**...)``)."""
        options: dict[str, Any] = {"algorithms": [self.algorithm]}
        if self._public_pem is None:
            options["secret"] = self._key
        else:
            options["public_key"] = self._public_pem
        if self.issuer is not None:
            options["issuer"] = self.issuer
        if self.audience is not None:
            options["audience"] = self.audience
        if self.token_type not in (None, "JWT"):
            options["token_type"] = self.token_type
        options.update(extra)
        return options

    def issue(
        self,
        subject: str,
        claims: Mapping[str, Any] | None = None,
        *,
        lifetime: float | datetime.timedelta | None = None,
        audience: str | Sequence[str] | None = None,
        scope: str | Sequence[str] | None = None,
        client_ip: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """A signed token for ``subject``; emits ``token_issued`` (never the token).

        ``claims`` adds claims (not ``iss``, ``sub``, ``aud``, ``iat``, ``exp``,
        ``jti``, which the issuer sets), each a JSON value; ``scope`` (or
        ``claims["scope"]``, not both), a space-separated string or a list of
        RFC 6749 scope tokens, becomes one space-separated ``scope`` claim (none
        when empty); ``client_ip`` and ``request_id`` go into the event.

        Every argument is checked before the token is signed (``ValueError``,
        naming it).  Once signed, the token is returned: an event a broken
        handler could not take is reported on ``jwt_audit.internal``.
        """
        payload = self._payload(subject, claims, lifetime, audience, scope)
        # the event is complete before the token exists: only its fingerprint comes after
        event = self.audit.build_event(
            "token_issued",
            "allowed",
            subject=subject,
            client_ip=client_ip,
            request_id=request_id,
            issuer=self.issuer,
            token_id=payload["jti"],
            audience=payload.get("aud"),
            scopes=payload.get("scope", "").split(),
            alg=self.algorithm,
            kid=self.kid,
            detail=f"expires {rfc3339(payload['exp'])}",
            claims={"iat": payload["iat"], "exp": payload["exp"]},
        )
        headers: dict[str, Any] = {}
        if self.token_type is not None:
            headers["typ"] = self.token_type
        if self.kid is not None:
            headers["kid"] = self.kid
        token = jwt.encode(payload, self._key, algorithm=self.algorithm, headers=headers)
        event["token_fingerprint"] = fingerprint(token)
        try:
            self.audit.emit(event, logging.INFO)
        except Exception:  # a broken handler must not lose a token already signed...
            with contextlib.suppress(Exception):  # ...nor the report of it, if it breaks that too
                internal_logger.error("jwt_audit: token_issued could not be emitted", exc_info=True)
        return token

    def _payload(
        self,
        subject: object,
        claims: object,
        lifetime: object,
        audience: object,
        scope: object,
    ) -> dict[str, Any]:
        """The claims of one token, every argument checked (``ValueError``, naming it)."""
        if not isinstance(subject, str) or not subject:
            raise ValueError("subject must be a non-empty string")
        extra = _extra_claims(claims)
        if "scope" in extra:
            if scope is not None:
                raise ValueError("scope: given both as scope= and in claims")
            scope = extra.pop("scope")
        fail = _argument_error
        seconds = self.lifetime
        if lifetime is not None:
            seconds = _checked(fail, "lifetime", _whole_seconds, lifetime, self.max_lifetime)
        aud = self.audience
        if audience is not None:
            aud = _checked(fail, "audience", _optional_audience, audience)
        scope_claim = None if scope is None else _checked(fail, "scope", _scope, scope)
        now = int(self.clock())
        payload: dict[str, Any] = {}
        if self.issuer is not None:
            payload["iss"] = self.issuer
        payload["sub"] = subject
        if aud is not None:
            payload["aud"] = aud if isinstance(aud, str) else list(aud)
        payload.update({"iat": now, "exp": now + seconds, "jti": uuid.uuid4().hex})
        if scope_claim is not None:
            payload["scope"] = scope_claim
        payload.update(extra)
        return payload

    def __repr__(self) -> str:  # never the key
        return (
            f"TokenIssuer(algorithm={self.algorithm!r}, kid={self.kid!r}, issuer={self.issuer!r})"
        )
