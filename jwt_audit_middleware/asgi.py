"""``JWTAuditMiddleware``: pure ASGI 3 middleware for http and websocket.

Per request it reads a handful of headers, asks the ``Gate`` for a verdict,
either answers with an RFC 6750 challenge or calls the app with the verified
token attached to the scope, and emits exactly one audit event: a denial when
the challenge is sent, an access when the app's response starts (or, if the
app never starts one, when it returns or raises).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser

from ._config import Components
from .events import WOULD_DENY
from .policy import EXEMPT, Verdict
from .request import LATE_DENIAL_KEY, MODE_KEY, SCOPE_KEY, RequestInfo
from .settings import Settings
from .verifier import VerifiedToken

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_RESPONSE_STARTS = frozenset(("http.response.start", "websocket.http.response.start"))


class JWTUser(BaseUser):
    """``request.user`` for a verified token (Starlette's ``BaseUser``)."""

    __slots__ = ("token",)

    def __init__(self, token: VerifiedToken) -> None:
        self.token = token

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.token.subject or ""

    @property
    def identity(self) -> str:
        return self.token.subject or ""

    @property
    def claims(self) -> dict[str, Any]:
        """The verified claims."""
        return self.token.claims

    def __repr__(self) -> str:
        return f"JWTUser(subject={self.token.subject!r})"


def attach(scope: Scope, verdict: Verdict) -> None:
    """Place the verdict's token where Starlette and ``get_claims()`` look for it."""
    token = verdict.token
    scope[SCOPE_KEY] = token
    if token is None:  # anonymous, on an optional path
        scope["user"] = UnauthenticatedUser()
        scope["auth"] = AuthCredentials()
        return
    scope["user"] = JWTUser(token)
    scopes = verdict.sorted_scopes
    if scopes is None:  # sorted once per verdict (a cached token's is shared)
        scopes = verdict.sorted_scopes = tuple(sorted(token.scopes))
    scope["auth"] = AuthCredentials(scopes)


class JWTAuditMiddleware:
    """ASGI middleware: verify the bearer token, attach claims, audit.

    ``JWTAuditMiddleware(app, settings=None, **options)``; in Starlette and
    FastAPI, ``app.add_middleware(JWTAuditMiddleware, **options)``.  Handles
    ``http`` and ``websocket``; every other scope type (``lifespan``) passes
    through untouched.
    """

    def __init__(self, app: ASGIApp, settings: Settings | None = None, **options: Any) -> None:
        self.app = app
        parts = Components(settings, options)
        self.settings = parts.settings
        self._gate = parts.gate
        self._reader = parts.reader
        self._audit = parts.audit
        header = parts.reader.request_id_header
        self._request_id_header = header.encode("latin-1") if header else None
        self._forwarding = parts.reader.reads_forwarding
        self._report_only = parts.gate.report_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = scope["type"]
        if protocol not in ("http", "websocket"):
            if protocol == "lifespan":
                await self.app(scope, receive, self._lifespan_send(send))
            # any other (future) scope type would reach the app unauthenticated:
            # fail closed and let the server refuse it
            return
        started = perf_counter()
        authorization: list[str] = []
        user_agent = request_id = forwarded = x_forwarded_for = None
        rid_header = self._request_id_header
        forwarding = self._forwarding
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization.append(value.decode("latin-1"))
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == rid_header:
                request_id = value.decode("latin-1")
            elif forwarding:
                if name == b"forwarded":
                    text = value.decode("latin-1")
                    forwarded = text if forwarded is None else f"{forwarded},{text}"
                elif name == b"x-forwarded-for":
                    text = value.decode("latin-1")
                    x_forwarded_for = (
                        text if x_forwarded_for is None else f"{x_forwarded_for},{text}"
                    )
        path: str = scope.get("path", "")
        client = scope.get("client")
        info = self._reader.info(
            scope.get("method", "GET"),
            path,
            protocol,
            client[0] if client else None,
            user_agent,
            request_id,
            started,
            forwarded,
            x_forwarded_for,
        )
        gate = self._gate
        try:
            verdict = gate.evaluate(path, authorization)
            if verdict.pending_keys is not None:
                verdict = await gate.refresh_async(verdict, path, authorization)
            if verdict.pending_revocation:
                verdict = await gate.resolve_async(verdict)
        except Exception:  # noqa: BLE001 - a bug of ours must not reach the server
            verdict = gate.internal_error("JWTAuditMiddleware")

        if not verdict.allow:
            await self._deny(scope, receive, send, verdict, info)
            return
        if verdict.outcome == WOULD_DENY:
            self._audit.request_event(verdict, info, verdict.status)
        if self._report_only:
            scope[MODE_KEY] = "report-only"
        if verdict.path_kind == EXEMPT:
            scope.setdefault("user", UnauthenticatedUser())
            scope.setdefault("auth", AuthCredentials())
            scope.setdefault(SCOPE_KEY, None)
        else:
            attach(scope, verdict)
        if verdict.outcome == WOULD_DENY:
            await self.app(scope, receive, send)
            return

        # The access event is emitted when the response starts, with its status.
        # (Inlined rather than a method: one coroutine less per request.)  It stays
        # a coroutine function: Channels' sync consumers check that before wrapping
        # it with async_to_sync, and its effects must happen when a message is
        # awaited, not when the app merely creates the awaitable.
        audit = self._audit
        emitted = False
        replaced = False  # the app's response is being replaced by a late denial's challenge

        async def audited_send(message: Message) -> None:
            nonlocal emitted, verdict, replaced
            if emitted:
                if not replaced:
                    await send(message)
                return  # the challenge body has been sent; drop the app's body
            kind = message["type"]
            late = scope.get(LATE_DENIAL_KEY)
            if late is not None and kind in ("http.response.start", "websocket.close"):
                verdict = self._gate.late_denial(verdict, late) or verdict
                if not verdict.allow:
                    emitted = replaced = True
                    await self._deny(scope, receive, send, verdict, info, connected=True)
                    return
            if kind in _RESPONSE_STARTS:
                status: int | None = message["status"]
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close":
                status = 403  # closed before accept: servers answer 403
            else:
                await send(message)
                return
            emitted = True
            try:
                await send(message)
            finally:
                audit.request_event(verdict, info, status)

        try:
            await self.app(scope, receive, audited_send)
        except BaseException:
            if not emitted:
                emitted = True
                audit.request_event(verdict, info, 500)
            raise
        if not emitted:
            audit.request_event(verdict, info, None)

    def close(self) -> None:
        """Stop background work (``jwks_url`` refresh threads); also done at lifespan shutdown."""
        self._gate.close()

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            await send(message)
            if message["type"] == "lifespan.shutdown.complete":
                self.close()

        return lifespan_send

    async def _deny(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        verdict: Verdict,
        info: RequestInfo,
        *,
        connected: bool = False,
    ) -> None:
        challenge = self._gate.challenge(verdict)
        status: int | None = challenge.status
        try:
            if scope["type"] == "http":
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": list(challenge.headers),
                    }
                )
                await send({"type": "http.response.body", "body": challenge.body})
            elif connected or (await receive())["type"] == "websocket.connect":
                if "websocket.http.response" in (scope.get("extensions") or {}):
                    await send(
                        {
                            "type": "websocket.http.response.start",
                            "status": status,
                            "headers": list(challenge.headers),
                        }
                    )
                    await send({"type": "websocket.http.response.body", "body": challenge.body})
                else:
                    status = 403  # what servers answer to a close before accept
                    await send(
                        {"type": "websocket.close", "code": 1008, "reason": verdict.reason or ""}
                    )
            else:
                status = None  # the client left before the handshake: nothing was sent
        finally:
            self._audit.request_event(verdict, info, status)
