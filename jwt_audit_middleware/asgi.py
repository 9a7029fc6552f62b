"""``JWTAuditMiddleware``: pure ASGI 3 middleware for http and websocket.

It translates the ASGI world around the one lifecycle (``lifecycle.py``):
headers and paths out of the scope, the challenge into ASGI messages, the
verified token into Starlette's ``scope["user"]`` / ``scope["auth"]``.  The
access event is emitted when the app's response starts (or, if the app never
starts one, when it returns or raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any

import anyio
from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser

from .errors import ConfigurationError, Denied
from .lifecycle import Exchange, Lifecycle
from .model import EXEMPT, LATE_DENIAL_KEY, Challenge, Verdict, VerifiedToken
from .settings import Settings
from .state import StateStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
internal_logger = logging.getLogger("jwt_audit.internal")


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
        """The verified identity (``sub``, or what the ``identity`` option makes of it)."""
        return self.token.identity or ""

    @property
    def claims(self) -> dict[str, Any]:
        """The verified claims."""
        return self.token.claims

    def __repr__(self) -> str:
        return f"JWTUser(subject={self.token.subject!r})"


def route_path(scope: Scope) -> tuple[str, str]:
    """``(the path the app routes on, the full path the client asked for)``.

    ASGI's ``path`` includes ``root_path`` (``uvicorn --root-path``, a Starlette
    ``Mount``); the app routes on the rest, as Starlette does.  A server that
    leaves the mount prefix out of ``path`` gets it added back for the event.
    """
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if not root:
        return path, path
    if not path.startswith(root):
        return path, root.rstrip("/") + path
    rest = path[len(root) :]
    if not rest:
        return "/", path
    return (rest, path) if rest[0] == "/" else (path, path)


class JWTAuditMiddleware:
    """ASGI middleware: verify the bearer token, attach claims, audit.

    ``JWTAuditMiddleware(app, settings=None, **options)``; in Starlette and
    FastAPI, ``app.add_middleware(JWTAuditMiddleware, **options)``.  Handles
    ``http`` and ``websocket``; every other scope type (``lifespan``) passes
    through untouched.  Starlette and FastAPI build their middleware when the
    server starts the app: a bad option then fails the lifespan startup (the
    server stops), and ``settings=Settings(...)`` fails at import already.
    """

    def __init__(
        self, app: ASGIApp | None = None, /, settings: Settings | None = None, **options: Any
    ) -> None:
        # ``app`` is positional-only so that ``add_middleware(JWTAuditMiddleware, ...)``
        # type-checks against Starlette's middleware protocol; Starlette before 0.42
        # passes it by keyword (``cls(app=app, ...)``), which lands in ``options``
        if app is None:
            app = options.pop("app", None)
            if app is None:
                raise TypeError("JWTAuditMiddleware needs the ASGI app to wrap")
        self.app: ASGIApp = app
        self._startup_error: ConfigurationError | None = None
        try:
            lifecycle = Lifecycle(settings, options)
        except ConfigurationError as exc:
            if not _in_event_loop():
                raise  # built at import or start-up: fail right here
            # Built lazily, inside the server's first ASGI call (Starlette and
            # FastAPI build their middleware then): raising now would read as
            # "lifespan unsupported" and leave a server answering 500.  Fail the
            # lifespan startup instead, so the server stops with this message.
            self._startup_error = exc
            internal_logger.error("jwt_audit: invalid configuration: %s", exc)
            # a stand-in for the challenge and the audit event; every request is refused
            lifecycle = Lifecycle(Settings(algorithms=["HS256"], secret=os.urandom(32)), {})
        self._lifecycle = lifecycle
        self.settings = lifecycle.settings
        self._gate = lifecycle.gate
        self._reader = lifecycle.reader
        self._identity_headers = lifecycle.identity_headers
        header = lifecycle.reader.request_id_header
        self._request_id_header = header.encode("latin-1") if header else None
        self._forwarding = lifecycle.reader.reads_forwarding
        settings = lifecycle.settings
        self._close_at_exp = settings.websocket_expiry == "close"
        self._watch_websockets = self._close_at_exp or settings.websocket_disconnect_events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = scope["type"]
        if protocol not in ("http", "websocket") or self._startup_error is not None:
            await self._not_a_request(scope, receive, send)
            return
        # The translation of the scope is inline, not a helper: a call here measured
        # 1.3k of the 86k instructions of a cached request (bench/callgrind_request.py).
        started = perf_counter()
        authorization: list[str] = []
        user_agent = request_id = forwarded = x_forwarded_for = None
        rid_header = self._request_id_header
        forwarding = self._forwarding
        identity_headers = self._identity_headers
        claimed_identity = False
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization.append(value.decode("latin-1"))
            elif name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == rid_header:
                request_id = value.decode("latin-1")
            elif name in identity_headers:
                claimed_identity = True
            elif forwarding:
                if name == b"forwarded":
                    text = value.decode("latin-1")
                    forwarded = text if forwarded is None else f"{forwarded},{text}"
                elif name == b"x-forwarded-for":
                    text = value.decode("latin-1")
                    x_forwarded_for = (
                        text if x_forwarded_for is None else f"{x_forwarded_for},{text}"
                    )
        if claimed_identity:  # the verified identity is the only one the app may read
            scope["headers"] = [h for h in scope["headers"] if h[0] not in identity_headers]
        path = full_path = scope.get("path", "")
        if scope.get("root_path"):  # mounted: rules see the path the app routes on
            path, full_path = route_path(scope)
        client = scope.get("client")
        info = self._reader.info(
            scope.get("method", "GET"),
            full_path,
            protocol,
            client[0] if client else None,
            user_agent,
            request_id,
            started,
            forwarded,
            x_forwarded_for,
        )
        lifecycle = self._lifecycle
        gate = self._gate
        method = info.method
        preflight = method == "OPTIONS" and _is_preflight(scope)
        verdict = gate.decide(path, authorization, info.client_ip, preflight, method)
        if verdict.unsettled:  # a key refetch, the revocation hook, the store: off the loop
            try:
                verdict = await gate.settle_async(
                    verdict, path, authorization, info.client_ip, method
                )
            except BaseException:  # cancelled (the client left): still one event
                lifecycle.begin(verdict, info).finish(None)
                raise
        exchange = lifecycle.begin(verdict, info)
        if exchange.denied:
            await self._deny(scope, receive, send, exchange, exchange.challenge())
            return
        token = lifecycle.attach(scope, verdict)
        if token is not None:  # Starlette's request.user / request.auth
            scope["user"] = JWTUser(token)
            scope["auth"] = AuthCredentials(verdict.auth_scopes)
        else:
            _no_user(scope, verdict)
        if exchange.done:  # a report-only would-deny, audited already
            await self.app(scope, receive, send)
            return

        # The access event is emitted when the response starts, with its status.
        # (Inlined rather than a method: one coroutine less per request.)  It stays
        # a coroutine function: Channels' sync consumers check that before wrapping
        # it with async_to_sync, and its effects must happen when a message is
        # awaited, not when the app merely creates the awaitable.
        replaced = False  # the app's response is being replaced by a late denial's challenge

        async def audited_send(message: Message) -> None:
            nonlocal replaced
            if exchange.done:
                if not replaced:
                    await send(message)
                return  # the challenge body has been sent; drop the app's body
            kind = message["type"]
            if kind in _LATE_DENIAL_POINTS and LATE_DENIAL_KEY in scope:
                challenge = exchange.late_challenge(scope)
                if challenge is not None:
                    replaced = True
                    await self._deny(scope, receive, send, exchange, challenge, connected=True)
                    return
                # report-only: now audited as would_deny; the app's response goes on
            if kind in _RESPONSE_STARTS:
                status: int | None = message["status"]
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close":
                status = 403  # closed before accept: servers answer 403
            else:
                await send(message)
                return
            try:
                await send(message)
            finally:
                exchange.finish(status)

        try:
            if protocol == "websocket" and self._watch_websockets:
                await self._watched_websocket(scope, receive, audited_send, send, exchange)
            else:
                await self.app(scope, receive, audited_send)
        except BaseException:
            exchange.finish(500)
            raise
        if not exchange.done:  # the app sent no response at all
            challenge = exchange.late_challenge(scope) if LATE_DENIAL_KEY in scope else None
            if challenge is None:
                exchange.finish(None)
            else:  # it asked for a denial and left the answer to us
                await self._deny(scope, receive, send, exchange, challenge, connected=True)

    async def _watched_websocket(
        self, scope: Scope, receive: Receive, send: Send, raw_send: Send, exchange: Exchange
    ) -> None:
        """A websocket the settings follow past its handshake.

        ``websocket_expiry="close"``: at the token's ``exp`` (plus leeway) the
        middleware closes the connection with 1008 and audits a ``denial``
        ``expired`` (report-only: audits ``would_deny`` and leaves it open).
        ``websocket_disconnect_events``: when an accepted socket ends, a
        ``disconnect`` event says how long it lived and who closed it.
        """
        closing: list[tuple[int | None, str]] = []  # (close code, who), first one wins
        accepted = False

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                closing.append((message.get("code", 1005), "the client"))
            return message

        async def watched_send(message: Message) -> None:
            nonlocal accepted
            kind = message["type"]
            if kind == "websocket.accept":
                accepted = True
            elif kind == "websocket.close":
                closing.append((message.get("code", 1000), "the app"))
            await send(message)

        token = exchange.verdict.token
        deadline = None
        if self._close_at_exp and token is not None and token.expires_at is not None:
            deadline = token.expires_at + self.settings.leeway_seconds
        try:
            if deadline is None or self._gate.report_only:
                await self.app(scope, watched_receive, watched_send)
                if deadline is not None and time.time() >= deadline:  # what would have happened
                    self._lifecycle.audit.request_event(
                        self._expired(exchange), exchange.info, None
                    )
                return
            # Cancelling the app at the deadline (no task group: the app's own
            # exceptions reach the server as they are, not in an ExceptionGroup)
            with anyio.move_on_after(max(0.0, deadline - time.time())) as timer:
                await self.app(scope, watched_receive, watched_send)
            if timer.cancelled_caught:
                await self._close_expired(scope, receive, raw_send, exchange, closing, accepted)
        finally:
            if accepted and self.settings.websocket_disconnect_events:
                code, who = closing[0] if closing else (None, "the server")
                detail = f"closed by {who}" + ("" if code is None else f", code {code}")
                self._lifecycle.audit.disconnect_event(exchange.verdict, exchange.info, detail)

    def _expired(self, exchange: Exchange) -> Verdict:
        verdict = exchange.verdict
        return self._gate.deny(
            Denied("expired", "the token expired during the connection"),
            verdict.fingerprint,
            verdict.path_kind,
            token=verdict.token,
        )

    async def _close_expired(  # noqa: PLR0917 - the watched socket's state, passed on
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: Exchange,
        closing: list[tuple[int | None, str]],
        accepted: bool,
    ) -> None:
        """The token expired while the app held the socket: close it, audit ``expired``."""
        expired = self._expired(exchange)
        if not accepted:  # still in the handshake: the expiry is the request's one denial
            if not exchange.done:
                exchange.verdict = expired
                await self._deny(
                    scope, receive, send, exchange, exchange.challenge(), connected=True
                )
            return
        self._lifecycle.audit.request_event(expired, exchange.info, None)
        if closing:  # the app had closed it already
            return
        closing.append((1008, "the middleware at the token's expiry"))
        with contextlib.suppress(Exception):  # the client may be gone already
            await send({"type": "websocket.close", "code": 1008, "reason": "token expired"})

    @property
    def state(self) -> StateStore | None:
        """The store of ``abuse_detection`` / ``state_url``: ``state.revoke_jti(...)`` and so on.

        ``None`` when neither is configured.
        """
        return self._lifecycle.state

    def close(self) -> None:
        """Stop background work (``jwks_url`` refresh threads); also done at lifespan shutdown."""
        self._lifecycle.close()

    async def _not_a_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``lifespan`` passes through; any other (future) scope type is refused.

        With a configuration error deferred from a lazy build, the lifespan
        startup fails with its message (the server exits) and every request
        is denied ``internal_error`` (a server run without lifespan events).
        """
        protocol = scope["type"]
        error = self._startup_error
        if protocol == "lifespan":
            if error is None:
                await self.app(scope, receive, self._lifespan_send(send))
            elif (await receive())["type"] == "lifespan.startup":
                message = f"jwt_audit: invalid configuration: {error}"
                await send({"type": "lifespan.startup.failed", "message": message})
        elif error is not None and protocol in ("http", "websocket"):
            denied = self._gate.deny(Denied("internal_error", "invalid configuration"), None)
            _, full_path = route_path(scope)
            client = scope.get("client")
            info = self._reader.info(
                scope.get("method", "GET"), full_path, protocol,
                client[0] if client else None, None, None, perf_counter(),
            )  # fmt: skip
            exchange = self._lifecycle.begin(denied, info)
            await self._deny(scope, receive, send, exchange, exchange.challenge())
        # any other (future) scope type would reach the app unauthenticated:
        # fail closed and let the server refuse it

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                # before saying so: the server may tear the loop down right after
                await self._gate.aclose()  # this loop's connections (a store in Redis)
                self.close()
            await send(message)

        return lifespan_send

    async def _deny(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: Exchange,
        challenge: Challenge,
        *,
        connected: bool = False,
    ) -> None:
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
                # audited before the last message: a tracer ends its span with it
                exchange.finish(status)
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
                    reason = exchange.verdict.reason or ""
                    await send({"type": "websocket.close", "code": 1008, "reason": reason})
            else:
                status = None  # the client left before the handshake: nothing was sent
        finally:
            exchange.finish(status)


def _is_preflight(scope: Scope) -> bool:
    """A CORS preflight: ``Origin`` and ``Access-Control-Request-Method`` (Fetch, §3.2.2)."""
    names = {name for name, _ in scope.get("headers", ())}
    return b"origin" in names and b"access-control-request-method" in names


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _no_user(scope: Scope, verdict: Verdict) -> None:
    """Starlette's unauthenticated ``request.user`` / ``request.auth``."""
    if verdict.path_kind == EXEMPT:  # an outer AuthenticationMiddleware's, if any
        scope.setdefault("user", UnauthenticatedUser())
        scope.setdefault("auth", AuthCredentials())
    else:  # anonymous, on an optional path
        scope["user"] = UnauthenticatedUser()
        scope["auth"] = AuthCredentials()


_RESPONSE_STARTS = frozenset(("http.response.start", "websocket.http.response.start"))
#: the messages at which a view's deny_request() is answered instead
_LATE_DENIAL_POINTS = frozenset(
    (
        "http.response.start",
        "websocket.accept",
        "websocket.close",
        "websocket.http.response.start",
    )
)
