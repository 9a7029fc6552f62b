"""What the middleware reads from a request and leaves on it.

``RequestReader`` turns the few raw values an adapter pulls out of a scope or
environ into a ``RequestInfo`` for the audit event: the client address
(believing forwarding headers only from ``trusted_proxies``), a sane request
id, and cleaned method, path and user agent.  ``get_claims()`` finds the
verified claims again on any kind of request object.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from .errors import Denied
from .events import MAX_PATH, MAX_USER_AGENT, REASONS, clean, new_request_id
from .model import LATE_DENIAL_KEY, MODE_KEY, SCOPE_KEY, RequestInfo, VerifiedToken
from .settings import Settings

_LATE_DETAILS = {
    "insufficient_scope": "the token lacks a required scope",
    "missing_token": "no Authorization header",
    "revoked": "the token has been revoked",
}

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=\-]{1,128}")
#: the most X-Forwarded-For / Forwarded hops read, from the right (more than any
#: real chain of proxies; past it the last hop read is the client)
MAX_FORWARDED_HOPS = 16
_FORWARDED_FOR = re.compile(r'(?:^|[;,\s])for=("?)([^;,"]*)\1', re.IGNORECASE)
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(text: str) -> _IPAddress | None:
    text = text.strip()
    if text.startswith("["):  # "[2001:db8::1]:4711"
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:  # "192.0.2.1:8080"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # "::ffff:10.0.0.1" from a dual-stack socket
    return address


class RequestReader:
    """Builds ``RequestInfo`` under one configuration (proxies, id header)."""

    def __init__(self, settings: Settings) -> None:
        self._trusted: tuple[_IPNetwork, ...] = tuple(
            ipaddress.ip_network(net, strict=False) for net in settings.trusted_proxies
        )
        self.request_id_header = settings.request_id_header
        self.reads_forwarding = bool(self._trusted)
        header = settings.request_id_header
        self._request_id_key = "HTTP_" + header.upper().replace("-", "_") if header else None

    def info_from_environ(
        self, environ: Mapping[str, Any], path: str, started: float
    ) -> RequestInfo:
        """``info()`` from a CGI-style mapping: a WSGI environ or Django's ``request.META``."""
        forwarding = self.reads_forwarding
        key = self._request_id_key
        return self.info(
            environ.get("REQUEST_METHOD") or "GET",
            path,
            "http",
            environ.get("REMOTE_ADDR"),
            environ.get("HTTP_USER_AGENT"),
            environ.get(key) if key else None,
            started,
            environ.get("HTTP_FORWARDED") if forwarding else None,
            environ.get("HTTP_X_FORWARDED_FOR") if forwarding else None,
        )

    def info(  # noqa: PLR0917 - positional on the adapters' hot path
        self,
        method: str,
        path: str,
        protocol: str,
        peer: str | None,
        user_agent: str | None,
        request_id: str | None,
        started: float,
        forwarded: str | None = None,
        x_forwarded_for: str | None = None,
    ) -> RequestInfo:
        """A ``RequestInfo`` from raw header values (``None`` when absent)."""
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = new_request_id()
        if self._trusted or peer is None:
            client_ip = self.client_ip(peer, forwarded, x_forwarded_for)
        elif len(peer) <= 64 and peer.isprintable():  # clean()'s fast path, inline
            client_ip = peer
        else:
            client_ip = clean(peer, 64)
        return RequestInfo(
            method if method in _METHODS else clean(method, 16),
            path if len(path) <= MAX_PATH and path.isprintable() else clean(path, MAX_PATH),
            protocol,
            client_ip,
            None if user_agent is None else clean(user_agent, MAX_USER_AGENT),
            request_id,
            started,
        )

    def client_ip(
        self, peer: str | None, forwarded: str | None, x_forwarded_for: str | None
    ) -> str:
        """The client address.

        The peer's address, or, when the peer is a trusted proxy, the first
        untrusted hop of ``X-Forwarded-For`` (or, without it, ``Forwarded``,
        RFC 7239), read from the right.
        """
        if peer is None:
            return "unknown"
        if not self._trusted or not self._is_trusted(_parse_ip(peer)):
            return clean(peer, 64)
        # X-Forwarded-For first: the proxies people run (nginx, cloud load balancers)
        # append to it, and pass a client's own Forwarded header through untouched.
        # Only the last MAX_FORWARDED_HOPS hops are read: a client behind a trusted
        # proxy can send any number of them, and each costs a parse and a look-up.
        if x_forwarded_for:
            hops = x_forwarded_for.rsplit(",", MAX_FORWARDED_HOPS)[-MAX_FORWARDED_HOPS:]
        elif forwarded:
            tail = forwarded[-MAX_FORWARDED_HOPS * 64 :]  # a cut first hop parses as garbage
            hops = [m.group(2) for m in _FORWARDED_FOR.finditer(tail)][-MAX_FORWARDED_HOPS:]
        else:
            return clean(peer, 64)
        client = peer
        for hop in reversed(hops):
            address = _parse_ip(hop)
            if address is None:
                break  # "unknown", an obfuscated id or garbage: stop at the last trusted hop
            client = str(address)
            if not self._is_trusted(address):
                break
        return clean(client, 64)

    def _is_trusted(self, address: _IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self._trusted)


def get_claims(obj: Any) -> dict[str, Any] | None:
    """The verified claims of a request, or ``None``.

    Accepts an ASGI scope, a WSGI environ, a Starlette ``Request`` or
    ``WebSocket``, a Django ``HttpRequest`` or a Flask/Werkzeug request.
    """
    token: object = None
    if isinstance(obj, Mapping):
        token = obj.get(SCOPE_KEY)
    else:
        token = getattr(obj, SCOPE_KEY, None)  # Django: request.jwt_audit
        if not isinstance(token, VerifiedToken):
            for attribute in ("scope", "environ", "META"):
                carrier = getattr(obj, attribute, None)
                if isinstance(carrier, Mapping) and SCOPE_KEY in carrier:
                    token = carrier[SCOPE_KEY]
                    break
    return token.claims if isinstance(token, VerifiedToken) else None


def _carrier(obj: Any) -> Any:
    if isinstance(obj, dict):
        return obj
    for attribute in ("scope", "environ"):
        carrier = getattr(obj, attribute, None)
        if isinstance(carrier, dict):
            return carrier
    raise TypeError("expected an ASGI scope, a WSGI environ or a request that carries one")


def deny_request(
    obj: Any,
    reason: str,
    *,
    required_scopes: tuple[str, ...] = (),
    detail: str | None = None,
) -> bool:
    """Ask the middleware to deny this request as ``reason`` after all.

    For checks only a view can make (FastAPI's scope dependencies, a Flask
    decorator): the middleware then sends its RFC 6750 challenge in place of
    the app's response (or its handshake refusal, for a websocket closed before
    accept) and audits the request as a ``denial``, exactly as if it had denied
    the request itself.  Returns whether the request will be denied: ``False``
    in report-only mode, where the app goes on and the event says
    ``would_deny``.
    """
    if reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    carrier = _carrier(obj)
    carrier[LATE_DENIAL_KEY] = Denied(
        reason,
        clean(detail, 256) if detail else _LATE_DETAILS.get(reason, "denied by the application"),
        required_scopes=tuple(required_scopes),
    )
    return bool(carrier.get(MODE_KEY) != "report-only")
