"""The audit event (schema ``jwt-audit/1``), the reason codes, and sanitising.

An event is a plain dict built from an allow-list of fields.  Nothing here
ever sees the raw token except ``fingerprint()``, which hashes it.  Every
string that came from the client passes through ``clean()``: length-capped and
with control characters escaped, so it can break neither a JSON line nor a
plain-text log line.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

SCHEMA: Final = "jwt-audit/1"

ACCESS: Final = "access"
DENIAL: Final = "denial"
DISCONNECT: Final = "disconnect"  # a websocket's end (websocket_disconnect_events)

ALLOWED: Final = "allowed"
DENIED: Final = "denied"
WOULD_DENY: Final = "would_deny"
CLOSED: Final = "closed"


@dataclass(frozen=True, slots=True)
class ReasonSpec:
    """How a denial reason is answered: HTTP status, RFC 6750 error, safe text."""

    status: int
    error: str | None
    description: str


#: The closed, public set of denial reasons (contract §5).
REASONS: Final[Mapping[str, ReasonSpec]] = {
    "missing_token": ReasonSpec(401, None, "A bearer token is required."),
    "unsupported_scheme": ReasonSpec(401, None, "Use the Bearer authorization scheme."),
    "invalid_request": ReasonSpec(400, "invalid_request", "The Authorization header is malformed."),
    "token_too_large": ReasonSpec(401, "invalid_token", "The token is too large."),
    "malformed_token": ReasonSpec(401, "invalid_token", "The token is malformed."),
    "algorithm_not_allowed": ReasonSpec(
        401, "invalid_token", "The token's signing algorithm is not accepted."
    ),
    "unknown_key": ReasonSpec(401, "invalid_token", "The token's signing key is not known."),
    "bad_signature": ReasonSpec(401, "invalid_token", "The token's signature is invalid."),
    "expired": ReasonSpec(401, "invalid_token", "The token has expired."),
    "not_yet_valid": ReasonSpec(401, "invalid_token", "The token is not valid yet."),
    "invalid_issuer": ReasonSpec(401, "invalid_token", "The token's issuer is not accepted."),
    "invalid_audience": ReasonSpec(
        401, "invalid_token", "The token is not meant for this service."
    ),
    "missing_claim": ReasonSpec(401, "invalid_token", "The token lacks a required claim."),
    "invalid_type": ReasonSpec(401, "invalid_token", "The token's type is not accepted."),
    "revoked": ReasonSpec(401, "invalid_token", "The token has been revoked."),
    "insufficient_scope": ReasonSpec(
        403, "insufficient_scope", "The token lacks the scope this resource requires."
    ),
    "key_unavailable": ReasonSpec(503, None, "Signing keys are unavailable; try again later."),
    "locked_out": ReasonSpec(429, None, "Too many failed attempts; try again later."),
    "internal_error": ReasonSpec(500, None, "The request could not be authenticated."),
}

#: Caps for strings that came from the client.
MAX_PATH = 1024
MAX_USER_AGENT = 256
MAX_FIELD = 256
MAX_LIST_ITEMS = 32


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def clean(value: str, limit: int = MAX_FIELD) -> str:
    r"""Cap ``value`` at ``limit`` characters and escape non-printable characters.

    Control characters (CR, LF, ESC, ...), line separators and other
    non-printable code points become ``\\xNN``/``\\uNNNN`` text, so a client
    string can split neither a JSON line nor a plain-text log line.  The fast
    path (short and printable, the common case) returns ``value`` itself.
    Truncation is marked with a trailing ``…``.
    """
    if len(value) <= limit and value.isprintable():
        return value
    truncated = len(value) > limit
    value = value[:limit]
    if not value.isprintable():
        pieces: list[str] = []
        size = 0
        for ch in value:
            piece = ch if ch.isprintable() else _escape(ch)
            size += len(piece)
            if size > limit:  # the cap holds for the escaped text too
                truncated = True
                break
            pieces.append(piece)
        value = "".join(pieces)
    return value + "…" if truncated else value


def clean_optional(value: object, limit: int = MAX_FIELD) -> str | None:
    """``clean()`` for a value that should be a string; anything else is ``None``."""
    return clean(value, limit) if isinstance(value, str) else None


def clean_list(values: object, limit: int = MAX_FIELD) -> list[str]:
    """A string or list of strings as a capped list of cleaned strings."""
    if isinstance(values, str):
        return [clean(values, limit)]
    if isinstance(values, (list, tuple, frozenset, set)):
        items = sorted(values) if isinstance(values, (frozenset, set)) else values
        return [clean(v, limit) for v in items[:MAX_LIST_ITEMS] if isinstance(v, str)]
    return []


def clean_json(value: Any, depth: int = 0) -> Any:
    """A JSON value with every string cleaned and depth and size capped."""
    if isinstance(value, str):
        return clean(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= 4:
        return "…"
    if isinstance(value, Mapping):
        return {
            clean(str(k), 64): clean_json(v, depth + 1)
            for k, v in list(value.items())[:MAX_LIST_ITEMS]
        }
    if isinstance(value, (list, tuple)):
        return [clean_json(v, depth + 1) for v in value[:MAX_LIST_ITEMS]]
    return clean(repr(value))


def fingerprint(token: str) -> str:
    """``sha256:`` + the first 16 hex digits of sha256(token).

    Lets one token be followed across events without storing it.
    """
    return fingerprint_of_digest(hashlib.sha256(token.encode("ascii", "replace")).digest())


def fingerprint_of_digest(digest: bytes) -> str:
    """``fingerprint()`` from an already computed SHA-256 digest."""
    return "sha256:" + digest[:8].hex()


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds.

    The part up to the second is formatted once per second and kept in one
    tuple, so threads never see half an update.
    """

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached = (-1, "")

    def format(self, now: float) -> str:
        # truncate like datetime.isoformat(timespec='milliseconds'); the 1 µs nudge
        # keeps 1700000000.123 (stored as .12299…) from printing as .122
        millis = int(now * 1000 + 0.001)
        second = millis // 1000
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        return prefix + _MILLIS[millis - second * 1000]  # a format spec costs more


_MILLIS = tuple(f".{fraction:03d}Z" for fraction in range(1000))


rfc3339 = _Clock().format


def identity_fields(
    claims: Mapping[str, Any], scopes: Iterable[str], alg: str | None, kid: str | None
) -> dict[str, Any]:
    """The token-derived fields of an event, cleaned (from verified claims only)."""
    get = claims.get
    subject, issuer, token_id, aud = get("sub"), get("iss"), get("jti"), get("aud")
    audience: Sequence[str] = ()
    if isinstance(aud, str):
        audience = [aud]
    elif isinstance(aud, (list, tuple)):
        audience = [item for item in aud if isinstance(item, str)]
    return verified_identity(
        subject if isinstance(subject, str) else None,
        issuer if isinstance(issuer, str) else None,
        token_id if isinstance(token_id, str) else None,
        audience,
        scope_fields(scopes),
        alg,
        kid,
    )


def scope_fields(scopes: Iterable[str]) -> list[str]:
    """The ``scopes`` of an event: distinct, sorted, at most ``MAX_LIST_ITEMS``, cleaned."""
    return [
        clean(scope)
        for scope in sorted(frozenset(scopes))[:MAX_LIST_ITEMS]
        if isinstance(scope, str)
    ]


def verified_identity(  # noqa: PLR0917 - the verifier calls it once per first-seen token
    subject: str | None,
    issuer: str | None,
    token_id: str | None,
    audience: Sequence[str],
    scopes: list[str],
    alg: str | None,
    kid: str | None,
) -> dict[str, Any]:
    """The token-derived fields of an event from values already of the right types.

    The verifier calls it once per accepted token with what it checked (``aud``
    as the strings it compared, ``scopes`` already ``scope_fields()``), so it
    skips ``identity_fields``' type checks; each string is cleaned here.
    """
    return {
        "subject": None if subject is None else clean(subject),
        "issuer": None if issuer is None else clean(issuer),
        "token_id": None if token_id is None else clean(token_id),
        "audience": [clean(item) for item in audience[:MAX_LIST_ITEMS]] if audience else [],
        "scopes": scopes,
        "alg": None if alg is None else clean(alg, 32),
        "kid": None if kid is None else clean(kid, 64),
    }


class _RequestIds:
    """Unique request ids: a random per-process prefix and a counter.

    Cheaper than ``os.urandom`` per request; the prefix is renewed in a forked
    child (gunicorn workers), so ids stay unique across processes.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(12).hex()
        # counting from 2**32 + 1, hex(n)[3:] is n's last 8 hex digits, zero-padded
        # (a format spec costs twice as much on this per-request path)
        self.counter = itertools.count(_FIRST_ID)

    def __call__(self) -> str:
        """32 hex digits: 24 of random prefix, 8 of counter."""
        number = next(self.counter)
        if number >= _LAST_ID:  # after 4 billion ids, a fresh prefix
            self.reset()
            number = next(self.counter)
        return self.prefix + hex(number)[3:]


_FIRST_ID = 2**32 + 1
_LAST_ID = 2**33
new_request_id = _RequestIds()


def app_event(
    event: str,
    outcome: str,
    *,
    reason: str | None = None,
    subject: object = None,
    client_ip: str | None = None,
    request_id: str | None = None,
    user_agent: str | None = None,
    method: str | None = None,
    path: str | None = None,
    issuer: str | None = None,
    token_id: str | None = None,
    audience: object = None,
    scopes: object = None,
    alg: str | None = None,
    kid: str | None = None,
    token_fingerprint: str | None = None,
    detail: str | None = None,
    claims: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``jwt-audit/1`` event for something an app did rather than a request.

    Same fields as a request event; request-only ones not given are null
    or empty.  Every string is cleaned like a client string (capped, no
    control characters), so a user name cannot forge a log line.
    """
    return {
        "schema": SCHEMA,
        "event": event,
        "outcome": outcome,
        "reason": None if reason is None else clean(str(reason), 64),
        "time": rfc3339(time.time()),
        "request_id": clean(request_id, 128) if request_id else new_request_id(),
        "method": clean_optional(method, 16),
        "path": clean_optional(path, 1024),
        "protocol": None,
        "status": None,
        "duration_ms": None,
        "client_ip": clean_optional(client_ip, 64),
        "user_agent": clean_optional(user_agent, 256),
        "subject": None if subject is None else clean(str(subject)),
        "issuer": clean_optional(issuer),
        "token_id": clean_optional(token_id),
        "audience": clean_list(audience),
        "scopes": clean_list(scopes),
        "alg": clean_optional(alg, 32),
        "kid": clean_optional(kid, 64),
        "token_fingerprint": token_fingerprint,
        "detail": clean_optional(detail),
        "claims": copy_claims(claims, claims) if claims else {},
    }


def copy_claims(claims: Mapping[str, Any] | None, names: Iterable[str]) -> dict[str, Any]:
    """The ``log_claims`` subset of ``claims``, cleaned."""
    if not claims:
        return {}
    return {name: clean_json(claims[name]) for name in names if name in claims}


__all__ = [
    "ACCESS",
    "ALLOWED",
    "DENIAL",
    "DENIED",
    "REASONS",
    "SCHEMA",
    "WOULD_DENY",
    "ReasonSpec",
    "app_event",
    "clean",
    "clean_json",
    "clean_list",
    "clean_optional",
    "copy_claims",
    "fingerprint",
    "fingerprint_of_digest",
    "identity_fields",
    "new_request_id",
    "rfc3339",
    "scope_fields",
    "verified_identity",
]
