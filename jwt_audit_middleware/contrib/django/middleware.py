"""``JWTAuditMiddleware`` for Django's ``MIDDLEWARE``, sync and async.

It translates a Django request around the one lifecycle (``lifecycle.py``)
and its answer back into Django: an ``HttpResponse`` with the RFC 6750
challenge, or the view's response with ``request.jwt_claims`` and
``request.jwt_audit`` set and ``META["REMOTE_USER"]`` the verified identity
(or absent).  One audit event per request: a denial when the challenge is
returned, an access when the response comes back up the chain (a 500 when an
exception does).

``__call__`` and ``__acall__`` share every step but the awaits: Django builds
the chain once, and under ASGI it passes an async ``get_response``, so no
request is ever adapted between the two.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse

from jwt_audit_middleware.errors import ConfigurationError
from jwt_audit_middleware.lifecycle import Exchange, Lifecycle
from jwt_audit_middleware.model import Challenge, RequestInfo, Verdict

from .conf import read_settings

Request = Any  # django.http.HttpRequest (Django ships no type hints)
Response = Any  # django.http.HttpResponseBase
SyncGetResponse = Callable[[Request], Response]
AsyncGetResponse = Callable[[Request], Awaitable[Response]]


class JWTAuditMiddleware:
    """Verify the bearer token of every request; attach the claims; audit.

    Configured by ``settings.JWT_AUDIT`` (a dict of options, keys in either
    case).  A bad configuration raises ``ImproperlyConfigured`` when Django
    loads its middleware, i.e. at start-up.  Rules are matched against
    ``request.path_info`` (never the ``SCRIPT_NAME`` mount prefix); the event
    records ``request.path``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: SyncGetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        try:
            self._lifecycle = Lifecycle(read_settings(), {})
        except ConfigurationError as exc:
            raise ImproperlyConfigured(f"JWT_AUDIT: {exc}") from None
        self.settings = self._lifecycle.settings
        self._gate = self._lifecycle.gate

    def __call__(self, request: Request) -> Response:
        if self.async_mode:
            return self.__acall__(request)
        info = self._info(request)
        verdict = self._gate.decide_sync(
            request.path_info, _bearer(request), info.client_ip, _preflight(request), info.method
        )
        exchange = self._begin(request, verdict, info)
        if exchange.denied:
            return self._challenge(exchange)
        try:
            response = self.get_response(request)
        except BaseException:
            exchange.finish(500)
            raise
        return self._end(request, exchange, response)

    async def __acall__(self, request: Request) -> Response:
        """The flavour Django calls under ASGI (an async ``get_response``)."""
        authorization = _bearer(request)
        info = self._info(request)
        client_ip = info.client_ip
        method = info.method
        verdict = self._gate.decide(
            request.path_info, authorization, client_ip, _preflight(request), method
        )
        if verdict.unsettled:  # a key refetch, the revocation hook, the store: off the loop
            try:
                verdict = await self._gate.settle_async(
                    verdict, request.path_info, authorization, client_ip, method
                )
            except BaseException:  # cancelled (the client left): still one event
                self._begin(request, verdict, info).finish(None)
                raise
        exchange = self._begin(request, verdict, info)
        if exchange.denied:
            return self._challenge(exchange)
        try:
            response = await self.get_response(request)
        except BaseException:
            exchange.finish(500)
            raise
        return self._end(request, exchange, response)

    # -- the translation, shared by both flavours ---------------------------

    def _info(self, request: Request) -> RequestInfo:
        """The request's own event fields (its client IP for the lockout check too)."""
        reader = self._lifecycle.reader
        return reader.info_from_environ(request.META, request.path, time.perf_counter())

    def _begin(self, request: Request, verdict: Verdict, info: RequestInfo) -> Exchange:
        """The request's exchange; unless denied, the token attached to the request."""
        lifecycle = self._lifecycle
        exchange = lifecycle.begin(verdict, info)
        if exchange.denied:
            return exchange
        # Django's async RemoteUserMiddleware reads META["HTTP_REMOTE_USER"] (5.x)
        token = lifecycle.attach_environ(request.META, verdict, header_too=True)
        request.__dict__.pop("headers", None)  # a cached request.headers read META before
        carrier = _carrier(request)
        if carrier is not request.META:  # ASGI: deny_request() looks in the scope
            lifecycle.attach(carrier, verdict)
        request.jwt_audit = token
        request.jwt_claims = None if token is None else token.claims
        return exchange

    def _challenge(self, exchange: Exchange, challenge: Challenge | None = None) -> HttpResponse:
        challenge = challenge or exchange.challenge()
        response = HttpResponse(challenge.body, status=challenge.status)
        for name, value in challenge.text_headers:
            response[name] = value
        exchange.finish(challenge.status)
        return response

    def _end(self, request: Request, exchange: Exchange, response: Response) -> Response:
        """Answer a view's ``deny_request()``; emit the access (or late denial) event."""
        challenge = exchange.late_challenge(_carrier(request))
        if challenge is not None:
            return self._challenge(exchange, challenge)
        exchange.finish(response.status_code)
        return response


def _preflight(request: Request) -> bool:
    """A CORS preflight: ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``."""
    meta = request.META
    return (
        request.method == "OPTIONS"
        and "HTTP_ORIGIN" in meta
        and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in meta
    )


def _bearer(request: Request) -> list[str]:
    authorization = request.META.get("HTTP_AUTHORIZATION")
    return [] if authorization is None else [authorization]


def _carrier(request: Request) -> Any:
    """Where ``deny_request()`` leaves its denial: the ASGI scope, else ``META`` (the environ)."""
    scope = getattr(request, "scope", None)
    return scope if isinstance(scope, dict) else request.META
