"""``TokenIssuer``: mint tokens for apps that issue their own, and audit each one.

Every token issued emits a ``token_issued`` event (subject, ``jti``, expiry,
fingerprint), so the audit trail can follow a token from its issuance through
every request that presents it.  The event never holds the token.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
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
        ``jti``, which the issuer sets); ``scope`` becomes the space-separated
        ``scope`` claim; ``client_ip`` and ``request_id`` go into the event.
        """
        if not isinstance(subject, str) or not subject:
            raise ValueError("subject must be a non-empty string")
        extra = dict(claims or {})
        clash = RESERVED_CLAIMS.intersection(extra)
        if clash:
            raise ValueError(f"claims set by the issuer itself: {sorted(clash)}")
        now = int(self.clock())
        seconds = self.lifetime
        if lifetime is not None:
            seconds = _checked(
                _argument_error, "lifetime", _whole_seconds, lifetime, self.max_lifetime
            )
        payload: dict[str, Any] = {}
        if self.issuer is not None:
            payload["iss"] = self.issuer
        payload["sub"] = subject
        aud = self.audience
        if audience is not None:
            aud = _checked(_argument_error, "audience", _optional_audience, audience)
        if aud is not None:
            payload["aud"] = aud if isinstance(aud, str) else list(aud)
        payload.update({"iat": now, "exp": now + seconds, "jti": uuid.uuid4().hex})
        if scope is not None:
            payload["scope"] = scope if isinstance(scope, str) else " ".join(scope)
        payload.update(extra)
        headers: dict[str, Any] = {}
        if self.token_type is not None:
            headers["typ"] = self.token_type
        if self.kid is not None:
            headers["kid"] = self.kid
        token = jwt.encode(payload, self._key, algorithm=self.algorithm, headers=headers)
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
            token_fingerprint=fingerprint(token),
            detail=f"expires {rfc3339(payload['exp'])}",
            claims={"iat": payload["iat"], "exp": payload["exp"]},
        )
        self.audit.emit(event, logging.INFO)
        return token

    def __repr__(self) -> str:  # never the key
        return (
            f"TokenIssuer(algorithm={self.algorithm!r}, kid={self.kid!r}, issuer={self.issuer!r})"
        )
