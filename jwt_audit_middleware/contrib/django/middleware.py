"""``JWTAuditMiddleware`` for Django's ``MIDDLEWARE``, sync and async.

It translates a Django request into the same ``Gate`` calls as the ASGI and
WSGI middlewares and their answer back into Django: an ``HttpResponse`` with
the RFC 6750 challenge, or the view's response with ``request.jwt_claims`` and
``request.jwt_audit`` set.  One audit event per request: a denial when the
challenge is returned, an access when the response comes back up the chain
(a 500 when an exception does).

Django builds the middleware chain once: under ASGI it passes an async
``get_response`` and gets the async flavour, under WSGI the sync one, so no
request is ever adapted between the two.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse

from jwt_audit_middleware._config import Components
from jwt_audit_middleware.errors import ConfigurationError
from jwt_audit_middleware.events import WOULD_DENY
from jwt_audit_middleware.policy import EXEMPT, Verdict
from jwt_audit_middleware.request import LATE_DENIAL_KEY, RequestInfo

from .conf import read_settings

Request = Any  # django.http.HttpRequest (Django ships no type hints)
Response = Any  # django.http.HttpResponseBase
SyncGetResponse = Callable[[Request], Response]
AsyncGetResponse = Callable[[Request], Awaitable[Response]]


class JWTAuditMiddleware:
    """Verify the bearer token of every request; attach the claims; audit.

    Configured by ``settings.JWT_AUDIT`` (a dict of options, keys in either
    case).  A bad configuration raises ``ImproperlyConfigured`` when Django
    loads its middleware, i.e. at start-up.
    """

    sync_capable = True
    async_capable = True

    def __new__(cls, get_response: SyncGetResponse | AsyncGetResponse) -> JWTAuditMiddleware:
        if cls is JWTAuditMiddleware and iscoroutinefunction(get_response):
            cls = AsyncJWTAuditMiddleware  # noqa: PLW0642 - pick the flavour once
        return super().__new__(cls)

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        try:
            parts = Components(read_settings(), {})
        except ConfigurationError as exc:
            raise ImproperlyConfigured(f"JWT_AUDIT: {exc}") from None
        self.settings = parts.settings
        self._gate = parts.gate
        self._reader = parts.reader
        self._audit = parts.audit

    def __call__(self, request: Request) -> Response:
        info, verdict, headers = self._evaluate(request)
        if verdict.pending_keys is not None:  # an unknown kid of a jwks_url: refetch once
            try:
                verdict = self._gate.refresh_sync(verdict, request.path, headers)
            except Exception:  # noqa: BLE001 - a bug of ours must not reach the server
                verdict = self._gate.internal_error("contrib.django.JWTAuditMiddleware")
        if verdict.pending_revocation:
            verdict = self._gate.resolve_sync(verdict)
        if not verdict.allow:
            return self._deny(verdict, info)
        self._attach(request, verdict)
        if verdict.outcome == WOULD_DENY:
            self._audit.request_event(verdict, info, verdict.status)
            return self.get_response(request)
        try:
            response = self.get_response(request)
        except BaseException:
            self._audit.request_event(verdict, info, 500)
            raise
        return self._finish(request, verdict, info, response)

    # -- the translation, shared by both flavours ---------------------------

    def _evaluate(self, request: Request) -> tuple[RequestInfo, Verdict, list[str]]:
        started = time.perf_counter()
        meta = request.META
        path: str = request.path
        info = self._reader.info_from_environ(meta, path, started)
        authorization = meta.get("HTTP_AUTHORIZATION")
        headers = [] if authorization is None else [authorization]
        try:
            verdict = self._gate.evaluate(path, headers)
        except Exception:  # noqa: BLE001 - a bug of ours must not reach the server
            verdict = self._gate.internal_error("contrib.django.JWTAuditMiddleware")
        return info, verdict, headers

    def _challenge(self, verdict: Verdict) -> HttpResponse:
        challenge = self._gate.challenge(verdict)
        response = HttpResponse(challenge.body, status=challenge.status)
        for name, value in challenge.headers:
            response[name.decode("latin-1")] = value.decode("latin-1")
        return response

    def _deny(self, verdict: Verdict, info: RequestInfo) -> HttpResponse:
        response = self._challenge(verdict)
        self._audit.request_event(verdict, info, response.status_code)
        return response

    @staticmethod
    def _attach(request: Request, verdict: Verdict) -> None:
        token = None if verdict.path_kind == EXEMPT else verdict.token
        request.jwt_audit = token
        request.jwt_claims = None if token is None else token.claims
        if token is not None and token.subject is not None:
            request.META["REMOTE_USER"] = token.subject  # as under WSGI: RemoteUserMiddleware

    def _finish(
        self, request: Request, verdict: Verdict, info: RequestInfo, response: Response
    ) -> Response:
        """Answer a view's ``deny_request()``; emit the access (or late denial) event."""
        scope = getattr(request, "scope", None)  # ASGIRequest; a WSGIRequest's environ is META
        carrier = scope if isinstance(scope, dict) else request.META
        late = carrier.get(LATE_DENIAL_KEY)
        if late is not None:
            verdict = self._gate.late_denial(verdict, late) or verdict
            if not verdict.allow:
                response = self._challenge(verdict)
        self._audit.request_event(verdict, info, response.status_code)
        return response


class AsyncJWTAuditMiddleware(JWTAuditMiddleware):
    """The flavour Django builds under ASGI (an async ``get_response``)."""

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request: Request) -> Response:
        info, verdict, headers = self._evaluate(request)
        if verdict.pending_keys is not None:  # an unknown kid of a jwks_url: refetch once
            try:
                verdict = await self._gate.refresh_async(verdict, request.path, headers)
            except Exception:  # noqa: BLE001 - a bug of ours must not reach the server
                verdict = self._gate.internal_error("contrib.django.JWTAuditMiddleware")
        if verdict.pending_revocation:
            verdict = await self._gate.resolve_async(verdict)
        if not verdict.allow:
            return self._deny(verdict, info)
        self._attach(request, verdict)
        if verdict.outcome == WOULD_DENY:
            self._audit.request_event(verdict, info, verdict.status)
            return await self.get_response(request)
        try:
            response = await self.get_response(request)
        except BaseException:
            self._audit.request_event(verdict, info, 500)
            raise
        return self._finish(request, verdict, info, response)
