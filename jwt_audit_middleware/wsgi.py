"""``JWTAuditWSGIMiddleware``: PEP 3333 middleware.

The same verdict as the ASGI middleware, translated into a WSGI call.  The
access event is emitted when the server closes the response iterable, with
the status the app passed to ``start_response``; the inner iterable's
``close()`` is always called.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any

from ._config import Components
from .events import WOULD_DENY
from .policy import EXEMPT, Verdict
from .request import LATE_DENIAL_KEY, MODE_KEY, SCOPE_KEY, RequestInfo
from .settings import Settings

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
StartResponse = Callable[..., Callable[[bytes], object]]
Environ = dict[str, Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _str_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def _wsgi_path(environ: Environ) -> str:
    """``SCRIPT_NAME + PATH_INFO`` as the client sent it (PEP 3333 strings are latin-1)."""
    raw: str = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if raw.isascii():
        return raw
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw


class _AuditedResponse:
    """The app's iterable; ``close()`` closes it, then emits the access event once."""

    __slots__ = ("_done", "_iterable", "_on_close", "_replacement")

    def __init__(
        self,
        iterable: Iterable[bytes],
        on_close: Callable[[], None],
        replacement: list[bytes] | None = None,
    ) -> None:
        self._iterable = iterable
        self._on_close = on_close
        self._replacement = replacement
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        # A late denial's challenge replaces the app's body, also when a generator
        # app only calls start_response (and deny_request) on its first next().
        replacement = self._replacement
        if not replacement:
            for chunk in self._iterable:
                if replacement:
                    break
                yield chunk
            else:
                return
        yield from replacement

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            if not self._done:
                self._done = True
                self._on_close()


class JWTAuditWSGIMiddleware:
    """WSGI middleware: verify the bearer token, attach claims, audit.

    ``JWTAuditWSGIMiddleware(app, settings=None, **options)``; in Flask,
    ``app.wsgi_app = JWTAuditWSGIMiddleware(app.wsgi_app, ...)``.  Verified
    tokens are placed at ``environ["jwt_audit"]`` and ``REMOTE_USER`` is set
    to the token's ``sub``.
    """

    def __init__(self, app: WSGIApp, settings: Settings | None = None, **options: Any) -> None:
        self.app = app
        parts = Components(settings, options)
        self.settings = parts.settings
        self._gate = parts.gate
        self._reader = parts.reader
        self._audit = parts.audit

    def close(self) -> None:
        """Stop background work (``jwks_url`` refresh threads)."""
        self._gate.close()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        authorization = environ.get("HTTP_AUTHORIZATION")
        path = _wsgi_path(environ)
        info = self._reader.info_from_environ(environ, path, started)
        gate = self._gate
        try:
            headers = [] if authorization is None else [authorization]
            verdict = gate.evaluate(path, headers)
            if verdict.pending_keys is not None:
                verdict = gate.refresh_sync(verdict, path, headers)
            verdict = gate.resolve_sync(verdict)
        except Exception:  # noqa: BLE001 - a bug of ours must not reach the server
            verdict = gate.internal_error("JWTAuditWSGIMiddleware")

        if not verdict.allow:
            challenge = gate.challenge(verdict)
            try:
                start_response(_status_line(challenge.status), _str_headers(challenge.headers))
            finally:
                self._audit.request_event(verdict, info, challenge.status)
            return [challenge.body]

        if gate.report_only:
            environ[MODE_KEY] = "report-only"
        if verdict.path_kind == EXEMPT:
            environ.setdefault(SCOPE_KEY, None)
        else:
            environ[SCOPE_KEY] = verdict.token
            if verdict.token is not None and verdict.token.subject is not None:
                environ["REMOTE_USER"] = verdict.token.subject
        if verdict.outcome == WOULD_DENY:
            self._audit.request_event(verdict, info, verdict.status)
            return self.app(environ, start_response)
        return self._call_app(environ, start_response, verdict, info)

    def _call_app(
        self, environ: Environ, start_response: StartResponse, verdict: Verdict, info: RequestInfo
    ) -> Iterable[bytes]:
        seen: list[int] = []
        challenge_body: list[bytes] = []

        def recording_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            nonlocal verdict
            late = environ.get(LATE_DENIAL_KEY)
            if late is not None and not challenge_body:
                verdict = self._gate.late_denial(verdict, late) or verdict
                if not verdict.allow:
                    challenge = self._gate.challenge(verdict)
                    challenge_body.append(challenge.body)
                    seen.append(challenge.status)
                    return start_response(
                        _status_line(challenge.status), _str_headers(challenge.headers), exc_info
                    )
            with contextlib.suppress(ValueError):
                seen.append(int(status[:3]))
            return start_response(status, headers, exc_info)

        def emit() -> None:
            self._audit.request_event(verdict, info, seen[-1] if seen else None)

        try:
            result = self.app(environ, recording_start_response)
        except BaseException:
            self._audit.request_event(verdict, info, 500)
            raise
        return _AuditedResponse(result, emit, challenge_body)
