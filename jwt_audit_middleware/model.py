"""The values every layer passes around, frozen, in a leaf.

``VerifiedToken`` (with its read-only ``Claims``), the ``Verdict`` on one
request, the ``Challenge`` that answers a denial and the request's own fields
(``RequestInfo``).  Each carries what the audit event needs from its
creation, so no other module writes into them; only ``events`` (itself a
leaf: cleaning and the schema) is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, Final

from .events import ACCESS, DENIAL, SCHEMA

#: Where the verified token lives in an ASGI scope, a WSGI environ, a request.
SCOPE_KEY: Final = "jwt_audit"
#: Where view-level code leaves a denial for the middleware to answer and audit.
LATE_DENIAL_KEY: Final = "jwt_audit.denial"
#: Present (``"report-only"``) when the middleware lets denials through.
MODE_KEY: Final = "jwt_audit.mode"
#: Present (``True``) on a CORS preflight let through unauthenticated (``pass_cors_preflight``).
PREFLIGHT_KEY: Final = "jwt_audit.preflight"

#: What the path rules make of a request path.
EXEMPT: Final = "exempt"
OPTIONAL: Final = "optional"
REQUIRED: Final = "required"


class Claims(dict[str, Any]):
    """The verified claims: a ``dict`` that cannot be changed, nor can anything in it.

    A cached token's claims serve every request that presents the token, so
    an app that wrote into them (``claims["roles"].append("admin")`` too)
    would change what later requests (and the revocation hook) see.  Nested
    objects are ``Claims`` and nested arrays ``ClaimList``, both read-only.
    It still serialises like a dict (``json``, FastAPI, Flask); ``dict(claims)``
    gives a private, writable (shallow) copy.
    """

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        dict.__init__(self, *args, **kwargs)
        if _NESTED.isdisjoint(map(type, dict.values(self))):  # the common, flat case
            return
        for key, value in dict.items(self):
            kind = type(value)
            if kind is list or kind is dict:
                dict.__setitem__(self, key, _read_only(value))

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


class ClaimList(list[Any]):
    """A JSON array inside verified claims: a ``list`` that cannot be changed."""

    __slots__ = ()

    def __init__(self, items: Any = ()) -> None:
        super().__init__(_read_only(item) for item in items)

    def _read_only(self, *args: object, **kwargs: object) -> Any:
        raise TypeError("verified claims are read-only; copy them with list(value)")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __reduce__(self) -> tuple[Any, ...]:
        return (ClaimList, (list(self),))

    def __copy__(self) -> ClaimList:
        return self

    def __deepcopy__(self, memo: object) -> ClaimList:
        return self


_NESTED = frozenset((list, dict))


def _read_only(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return Claims(value)
    if kind is list:
        return ClaimList(value)
    return value


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature and claims verified.

    Placed at ``scope["jwt_audit"]`` / ``environ["jwt_audit"]``.  It holds no
    token text: ``fingerprint`` identifies the token without revealing it.
    ``identity`` is the name downstream code sees (``REMOTE_USER``,
    ``request.user.identity``): ``sub`` by default, or what the ``identity``
    option makes of the claims (``"{iss}|{sub}"`` with several providers).
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
    event_fields: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The token's audit-event fields, cleaned once (served from the cache after that)."""
    identity: str | None = None

    @property
    def alg(self) -> str:
        """The JOSE ``alg`` the token was signed with."""
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        """The JOSE ``kid`` of the signing key, if the token named one."""
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


@dataclass(slots=True)
class RequestInfo:
    """The request-side fields of an audit event, already cleaned.

    One per request and never shared, so not frozen: a frozen dataclass's
    ``__init__`` costs a generic attribute set per field on every request.
    """

    method: str
    path: str
    protocol: str
    client_ip: str
    user_agent: str | None
    request_id: str
    started: float


#: The token-derived fields of an event without a verified token.
_NO_IDENTITY: Mapping[str, Any] = MappingProxyType(
    {
        "subject": None,
        "issuer": None,
        "token_id": None,
        "audience": (),
        "scopes": (),
        "alg": None,
        "kid": None,
        "claims": {},
    }
)


def event_base(
    outcome: str,
    reason: str | None,
    fingerprint: str | None,
    detail: str | None,
    identity: Mapping[str, Any],
) -> dict[str, Any]:
    """The fields of an event that depend on the verdict only, in schema order."""
    return {
        "schema": SCHEMA,
        "event": ACCESS if reason is None else DENIAL,
        "outcome": outcome,
        "reason": reason,
        "time": None,
        "request_id": None,
        "method": None,
        "path": None,
        "protocol": None,
        "status": None,
        "duration_ms": None,
        "client_ip": None,
        "user_agent": None,
        "subject": identity["subject"],
        "issuer": identity["issuer"],
        "token_id": identity["token_id"],
        "audience": identity["audience"],
        "scopes": identity["scopes"],
        "alg": identity["alg"],
        "kid": identity["kid"],
        "token_fingerprint": fingerprint,
        "detail": detail,
        "claims": identity["claims"],
    }


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one request, and what its audit event will say.

    ``allow`` says whether the app is called.  ``token`` is set when a token
    verified (also for a would-be denial in report-only mode).  ``event_base``
    holds the event's verdict-dependent fields; without one given, it is built
    from ``token`` (or left empty of identity).  A cached token's verdict is
    shared by every request that presents the token, which is why it is frozen.
    """

    allow: bool
    outcome: str
    reason: str | None = None
    status: int | None = None
    detail: str | None = None
    token: VerifiedToken | None = None
    fingerprint: str | None = None
    required_scopes: tuple[str, ...] = ()
    path_kind: str = REQUIRED
    pending_revocation: bool = False
    refresh_keys: Callable[[], object] | None = field(default=None, compare=False)
    """Set on an ``unknown_key``/``key_unavailable`` denial when refetching the
    token's JWKS URL may help: a blocking call, run in a thread from a loop."""
    pending_state: bool = False
    """The abuse-detection store (in Redis) is still to be asked (``Gate.settle_*``)."""
    retry_after: int | None = None
    """Seconds until a lockout ends (``locked_out``: the ``Retry-After`` header)."""
    event_base: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    auth_scopes: tuple[str, ...] = field(default=(), repr=False, compare=False)
    """The token's scopes, sorted (Starlette's ``AuthCredentials``)."""
    unsettled: bool = field(init=False, repr=False, compare=False)
    """A key refetch, the revocation hook or the store is still to be asked (``Gate.settle_*``)."""

    def __post_init__(self) -> None:
        unsettled = self.refresh_keys is not None or self.pending_revocation or self.pending_state
        object.__setattr__(self, "unsettled", unsettled)
        token = self.token
        if not self.event_base:
            fields = _NO_IDENTITY if token is None else token.event_fields
            base = event_base(self.outcome, self.reason, self.fingerprint, self.detail, fields)
            object.__setattr__(self, "event_base", base)
        if token is not None and not self.auth_scopes:
            object.__setattr__(self, "auth_scopes", tuple(sorted(token.scopes)))


@dataclass(frozen=True, slots=True)
class Challenge:
    """An RFC 6750 error response: status, headers, JSON body.

    Built once per reason at start-up, in ASGI's bytes and in PEP 3333's
    text (``status_line``, ``text_headers``) alike.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    status_line: str = field(default="", compare=False)
    text_headers: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.status_line:
            try:
                line = f"{self.status} {HTTPStatus(self.status).phrase}"
            except ValueError:
                line = str(self.status)
            object.__setattr__(self, "status_line", line)
        if not self.text_headers:
            text = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in self.headers)
            object.__setattr__(self, "text_headers", text)


__all__ = [
    "EXEMPT",
    "LATE_DENIAL_KEY",
    "MODE_KEY",
    "OPTIONAL",
    "REQUIRED",
    "SCOPE_KEY",
    "Challenge",
    "ClaimList",
    "Claims",
    "RequestInfo",
    "Verdict",
    "VerifiedToken",
    "event_base",
]
