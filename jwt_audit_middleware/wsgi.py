"""``JWTAuditWSGIMiddleware``: PEP 3333 middleware.

It translates the WSGI world around the one lifecycle (``lifecycle.py``): the
environ's path and headers in, the challenge through ``start_response``, the
verified token into ``environ``.  The access event is emitted when the
response iterable is exhausted or closed, whichever comes first, with the
status the app passed to ``start_response``; the inner iterable's ``close()``
is always called.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from .lifecycle import Exchange, Lifecycle
from .settings import Settings
from .state import StateStore

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
StartResponse = Callable[..., Callable[[bytes], object]]
Environ = dict[str, Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _text(raw: str) -> str:
    """A PEP 3333 string (latin-1 of the bytes sent) as the UTF-8 text the client meant."""
    if raw.isascii():
        return raw
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw


def _is_preflight(environ: Environ) -> bool:
    """A CORS preflight: ``Origin`` and ``Access-Control-Request-Method`` (Fetch, §3.2.2)."""
    return "HTTP_ORIGIN" in environ and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ


class _AuditedResponse:
    """The app's response: the access event is emitted once, when it is exhausted or closed.

    Exhausted first is the common case (a test client reading the body, a
    server sending it); ``close()`` still closes the app's iterable and covers
    a response dropped early.  A late denial's challenge replaces the app's
    status and body, also when a generator app only calls ``start_response``
    (and ``deny_request``) on its first ``next()``.
    """

    __slots__ = ("_environ", "_start_response", "exchange", "iterable", "replacement", "status")

    def __init__(self, exchange: Exchange, environ: Environ, start_response: StartResponse) -> None:
        self.exchange = exchange
        self._environ = environ
        self._start_response = start_response
        self.iterable: Iterable[bytes] = ()
        self.replacement: list[bytes] = []
        self.status: int | None = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        """The app's ``start_response``: records the status, or answers a late denial."""
        challenge = self.exchange.late_challenge(self._environ)
        if challenge is not None:
            self.replacement.append(challenge.body)
            self.status = challenge.status
            status, headers = challenge.status_line, list(challenge.text_headers)
        else:
            try:
                self.status = int(status[:3])
            except ValueError:
                self.status = None
        return self._start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        replacement = self.replacement
        if not replacement:
            sent = False
            try:
                for chunk in self.iterable:
                    if replacement:
                        break
                    yield chunk
                    sent = True
            except BaseException:
                if not sent:  # the headers are still unsent: the server answers 500
                    self.status = 500
                raise
        yield from replacement
        self.exchange.finish(self.status)

    def close(self) -> None:
        try:
            close = getattr(self.iterable, "close", None)
            if close is not None:
                close()
        finally:
            self.exchange.finish(self.status)


class JWTAuditWSGIMiddleware:
    """WSGI middleware: verify the bearer token, attach claims, audit.

    ``JWTAuditWSGIMiddleware(app, settings=None, **options)``; in Flask,
    ``app.wsgi_app = JWTAuditWSGIMiddleware(app.wsgi_app, ...)``.  Rules are
    matched against ``PATH_INFO`` (the path the app routes on, never
    ``SCRIPT_NAME``, which a proxy header can set).  Verified tokens are placed
    at ``environ["jwt_audit"]``; ``REMOTE_USER`` is the token's identity or
    absent, and the client's identity headers are removed.
    """

    def __init__(self, app: WSGIApp, settings: Settings | None = None, **options: Any) -> None:
        self.app = app
        self._lifecycle = lifecycle = Lifecycle(settings, options)
        self.settings = lifecycle.settings
        self._gate = lifecycle.gate
        self._reader = lifecycle.reader

    @property
    def state(self) -> StateStore | None:
        """The store of ``abuse_detection`` / ``state_url`` (``None`` when not configured)."""
        return self._lifecycle.state

    def close(self) -> None:
        """Stop background work (``jwks_url`` refresh threads)."""
        self._lifecycle.close()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        authorization = environ.get("HTTP_AUTHORIZATION")
        path = _text(environ.get("PATH_INFO", ""))
        full_path = _text(environ.get("SCRIPT_NAME", "")) + path
        info = self._reader.info_from_environ(environ, full_path, started)
        headers = [] if authorization is None else [authorization]
        lifecycle = self._lifecycle
        method = info.method
        preflight = method == "OPTIONS" and _is_preflight(environ)
        verdict = self._gate.decide_sync(path, headers, info.client_ip, preflight, method)
        exchange = lifecycle.begin(verdict, info)
        if exchange.denied:
            challenge = exchange.challenge()
            try:
                start_response(challenge.status_line, list(challenge.text_headers))
            finally:
                exchange.finish(challenge.status)
            return [challenge.body]
        lifecycle.attach_environ(environ, exchange.verdict)
        if exchange.done:  # a report-only would-deny, audited already
            return self.app(environ, start_response)
        response = _AuditedResponse(exchange, environ, start_response)
        try:
            response.iterable = self.app(environ, response.start_response)
        except BaseException:
            exchange.finish(500)
            raise
        return response
