"""ASGI protocol details with raw scopes: websocket, lifespan, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from typing import Any

import anyio
import pytest
from conftest import assert_no_secret
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from jwt_audit_middleware import ConfigurationError, JWTAuditMiddleware
from jwt_audit_middleware.request import deny_request
from jwt_audit_middleware.testing import CapturedEvents, SigningKey, asgi_request

pytestmark = pytest.mark.anyio
Message = dict[str, Any]


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def run(app: Any, scope: dict[str, Any], incoming: list[Message]) -> list[Message]:
    sent: list[Message] = []
    queue = list(incoming)

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def ws_scope(
    headers: list[tuple[bytes, bytes]], extensions: dict[str, Any] | None = None
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "subprotocols": [],
    }
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


async def test_lifespan_passes_through(rsa_key: SigningKey, events: CapturedEvents) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options())
    sent = await run(
        app, {"type": "lifespan", "asgi": {"version": "3.0"}}, [{"type": "lifespan.startup"}]
    )
    assert sent == [{"type": "lifespan.startup.complete"}]
    assert list(events) == []


async def test_websocket_denied_with_close_1008(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options())
    sent = await run(app, ws_scope([]), [{"type": "websocket.connect"}])
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "missing_token"}]
    event = events.only()
    assert (event["protocol"], event["reason"], event["status"]) == (
        "websocket",
        "missing_token",
        403,
    )


async def test_websocket_denial_response_extension(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    forged = other_rsa_key.token()
    app = JWTAuditMiddleware(echo_app, **rsa_key.options())
    scope = ws_scope(
        [(b"authorization", f"Bearer {forged}".encode())], {"websocket.http.response": {}}
    )
    sent = await run(app, scope, [{"type": "websocket.connect"}])
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 401
    headers = dict(sent[0]["headers"])
    assert b'error="invalid_token"' in headers[b"www-authenticate"]
    assert sent[1]["type"] == "websocket.http.response.body"
    assert_no_secret(repr(sent), forged)
    assert events.only()["reason"] == "bad_signature"


async def test_websocket_accepted_with_token(rsa_key: SigningKey, events: CapturedEvents) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options())
    scope = ws_scope([(b"authorization", f"Bearer {rsa_key.token(sub='ws-user')}".encode())])
    sent = await run(app, scope, [{"type": "websocket.connect"}])
    assert sent[0] == {"type": "websocket.accept"}
    assert scope["jwt_audit"].subject == "ws-user"
    event = events.only()
    assert (event["event"], event["status"], event["subject"]) == ("access", 101, "ws-user")


def test_starlette_websocket_route_with_requires(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    @requires("chat")
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(f"hi {websocket.user.identity}")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", chat)])
    app.add_middleware(JWTAuditMiddleware, **rsa_key.options())
    with TestClient(app) as test_client:
        headers = {"Authorization": "Bearer " + rsa_key.token(sub="carol", scope="chat")}
        with test_client.websocket_connect("/ws", headers=headers) as ws:
            assert ws.receive_text() == "hi carol"
        with pytest.raises(WebSocketDisconnect), test_client.websocket_connect("/ws") as ws:
            ws.receive_text()
    assert [(e["outcome"], e["reason"]) for e in events] == [
        ("allowed", None),
        ("denied", "missing_token"),
    ]


async def test_non_latin_and_huge_headers_never_raise(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options())
    odd_values = [
        b"Bearer \xff\xfe",
        b"\x00\x01Bearer x",
        b"Bearer " + b"A" * 100_000,
        b"Bearer ....",
        b"",
    ]
    for value in odd_values:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/x\r\ny",
            "headers": [(b"authorization", value), (b"user-agent", b"\xff" * 5000)],
            "client": None,
        }
        sent = await run(app, scope, [{"type": "http.request", "body": b""}])
        assert sent[0]["status"] in (400, 401)
    assert len(events) == len(odd_values)
    for event in events:
        assert event["client_ip"] == "unknown"
        assert event["path"] == "/x\\x0d\\x0ay"
        assert len(event["user_agent"]) <= 257


def test_settings_and_options_are_exclusive(rsa_key: SigningKey) -> None:
    from jwt_audit_middleware import ConfigurationError, Settings

    with pytest.raises(ConfigurationError, match="not both"):
        JWTAuditMiddleware(echo_app, settings=Settings(**rsa_key.options()), realm="x")
    app = JWTAuditMiddleware(echo_app, settings=Settings(**rsa_key.options(), realm="shop"))
    assert app.settings.realm == "shop"


@pytest.mark.parametrize(
    "path",
    ["/health/../admin", "/health/./../admin", "//health", "/health/..", "/health/%2e%2e/admin"],
)
async def test_dot_segments_never_match_exempt_rules(
    path: str, rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options(exempt_paths=["/health"]))
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [],
        "client": ("127.0.0.1", 1),
    }
    sent = await run(app, scope, [{"type": "http.request", "body": b""}])
    expected = 204 if "%2e" in path else 401  # ASGI paths arrive decoded; %2e stays literal text
    assert sent[0]["status"] == expected
    assert len(events) == 1


async def test_path_scopes_apply_to_normalised_path(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options(path_scopes={"/admin": ["admin"]}))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/public/../admin/users",
        "headers": [(b"authorization", f"Bearer {rsa_key.token(scope='read')}".encode())],
        "client": ("127.0.0.1", 1),
    }
    sent = await run(app, scope, [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 403
    assert events.only()["reason"] == "insufficient_scope"


async def test_exempt_root_is_the_root_page_only(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options(exempt_paths=["/"]))
    statuses = []
    for path in ("/", "/admin/users", "/orders"):
        scope = {"type": "http", "method": "GET", "path": path, "headers": [], "client": None}
        sent = await run(app, scope, [{"type": "http.request", "body": b""}])
        statuses.append(sent[0]["status"])
    assert statuses == [204, 401, 401]


async def test_unknown_scope_types_never_reach_the_app(rsa_key: SigningKey) -> None:
    called: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope["type"])

    middleware = JWTAuditMiddleware(app, **rsa_key.options())
    await run(middleware, {"type": "webtransport", "path": "/x", "headers": []}, [])
    assert called == []


async def test_websocket_client_gone_before_connect(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options())
    sent = await run(app, ws_scope([]), [{"type": "websocket.disconnect", "code": 1001}])
    assert sent == []
    event = events.only()
    assert (event["reason"], event["status"]) == ("missing_token", None)


async def test_the_app_gets_a_coroutine_function_as_send(rsa_key: SigningKey) -> None:
    """Django Channels' sync consumers wrap ``send`` in ``async_to_sync``, which checks."""
    seen: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(inspect.iscoroutinefunction(send))
        await echo_app(scope, receive, send)

    middleware = JWTAuditMiddleware(app, **rsa_key.options())
    response = await asgi_request(
        middleware, "/", headers={"Authorization": f"Bearer {rsa_key.token()}"}
    )
    assert response.status == 204
    assert seen == [True]


@pytest.mark.parametrize("late_denial", [False, True])
async def test_a_send_the_app_never_awaits_still_gives_one_event(
    rsa_key: SigningKey, events: CapturedEvents, late_denial: bool
) -> None:
    """The wrapper acts when its send is awaited: a cancelled send sends and logs nothing."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if late_denial:
            deny_request(scope, "insufficient_scope")
        task = asyncio.ensure_future(send({"type": "http.response.start", "status": 200}))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    middleware = JWTAuditMiddleware(app, **rsa_key.options())
    response = await asgi_request(
        middleware, "/", headers={"Authorization": f"Bearer {rsa_key.token()}"}
    )
    (event,) = events
    if late_denial:  # the app asked for a denial and sent nothing: the middleware answers
        assert (event["event"], event["status"], response.status) == ("denial", 403, 403)
    else:
        assert (event["event"], event["status"]) == ("access", None)  # nothing was sent


# -- a bad option in a lazily built middleware stops the server -------------------


async def test_lazy_build_with_a_bad_option_fails_the_lifespan_startup(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = Starlette()
    app.add_middleware(JWTAuditMiddleware, algoritms=["RS256"], public_key=rsa_key.public_pem)
    sent = await run(
        app, {"type": "lifespan", "asgi": {"version": "3.0"}}, [{"type": "lifespan.startup"}]
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "algoritms" in sent[0]["message"]
    assert "did you mean 'algorithms'" in sent[0]["message"]
    # a server run without lifespan events: every request is refused and audited
    response = await asgi_request(app, "/")
    assert response.status == 500
    assert events.only()["reason"] == "internal_error"


def test_a_bad_option_fails_at_construction_outside_a_server(rsa_key: SigningKey) -> None:
    with pytest.raises(ConfigurationError, match="algoritms"):
        JWTAuditMiddleware(echo_app, algoritms=["RS256"], public_key=rsa_key.public_pem)


# -- the verified identity is the only one the app can read -------------------------


async def test_client_identity_headers_are_removed(rsa_key: SigningKey) -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))
        await echo_app(scope, receive, send)

    middleware = JWTAuditMiddleware(
        app, **rsa_key.options(optional_paths=["/public"], identity_headers=["X-Auth-User"])
    )
    claimed = {"Remote-User": "admin", "X-Auth-User": "admin", "X-Trace": "kept"}
    await asgi_request(
        middleware, "/", headers={**claimed, "Authorization": "Bearer " + rsa_key.token()}
    )
    await asgi_request(middleware, "/public", headers=claimed)
    for headers in seen:
        names = [name for name, _ in headers]
        assert b"remote-user" not in names
        assert b"x-auth-user" not in names
        assert (b"x-trace", b"kept") in headers
    assert len(seen) == 2


# -- websockets past their handshake -----------------------------------------------------


async def idle_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts, then echoes until the client leaves (the client here never speaks)."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] != "websocket.disconnect":
        await send({"type": "websocket.send", "text": message.get("text")})


async def open_socket(app: Any, token: str) -> list[Message]:
    """One websocket connection whose client connects, then stays silent."""
    sent: list[Message] = []
    connected = False

    async def receive() -> Message:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = ws_scope([(b"authorization", f"Bearer {token}".encode())])
    with anyio.fail_after(10):
        await app(scope, receive, send)
    return sent


async def test_websocket_closed_at_exp_when_asked(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(
        idle_echo, **rsa_key.options(websocket_expiry="close", websocket_disconnect_events=True)
    )
    token = rsa_key.token(sub="ws-user", exp=time.time() + 1.0)
    sent = await open_socket(app, token)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[1]["code"] == 1008
    rows = [(e["event"], e["outcome"], e["reason"], e["status"], e["subject"]) for e in events]
    assert rows == [
        ("access", "allowed", None, 101, "ws-user"),
        ("denial", "denied", "expired", None, "ws-user"),
        ("disconnect", "closed", None, None, "ws-user"),
    ]
    assert "token's expiry, code 1008" in events[2]["detail"]
    assert events[2]["duration_ms"] >= 900  # it lived until exp, about a second


async def test_websocket_outlives_exp_by_default(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(idle_echo, **rsa_key.options())
    token = rsa_key.token(expires_in=1)
    with anyio.move_on_after(2.5) as waited:
        await open_socket(app, token)
    assert waited.cancelled_caught  # still open past exp: the documented default
    assert [(e["event"], e["status"]) for e in events] == [("access", 101)]


async def test_websocket_disconnect_event_names_the_closer(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options(websocket_disconnect_events=True))
    await run(
        app,
        ws_scope([(b"authorization", f"Bearer {rsa_key.token()}".encode())]),
        [{"type": "websocket.connect"}],
    )
    assert [(e["event"], e["status"]) for e in events] == [("access", 101), ("disconnect", None)]
    assert events[1]["detail"] == "closed by the app, code 1000"


# -- found in review of the lifecycle change ---------------------------------------------


async def test_deny_request_on_an_anonymous_request_answers_missing_token(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    async def orders(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if deny_request(scope, "insufficient_scope"):  # the README's pattern
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"secret order"})

    app = JWTAuditMiddleware(orders, **rsa_key.options(optional_paths=["/orders"]))
    response = await asgi_request(app, "/orders")
    assert response.status == 401
    assert b"secret order" not in response.body
    assert (events.only()["reason"], events.only()["status"]) == ("missing_token", 401)


async def test_deny_request_before_a_websocket_accept_refuses_the_handshake(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        deny_request(scope, "insufficient_scope", required_scopes=("chat",))
        await send({"type": "websocket.accept"})

    middleware = JWTAuditMiddleware(app, **rsa_key.options())
    scope = ws_scope([(b"authorization", f"Bearer {rsa_key.token()}".encode())])
    sent = await run(middleware, scope, [{"type": "websocket.connect"}])
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert (events.only()["reason"], events.only()["status"]) == ("insufficient_scope", 403)


async def test_underscore_spellings_of_identity_headers_are_removed(rsa_key: SigningKey) -> None:
    seen: list[list[bytes]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append([name for name, _ in scope["headers"]])
        await echo_app(scope, receive, send)

    middleware = JWTAuditMiddleware(app, **rsa_key.options())
    headers = {"remote_user": "root", "x_forwarded_user": "admin", "Authorization": ""}
    headers["Authorization"] = f"Bearer {rsa_key.token()}"
    await asgi_request(middleware, "/", headers=headers)
    assert b"remote_user" not in seen[0]
    assert b"x_forwarded_user" not in seen[0]


async def test_cancelled_while_the_revocation_hook_runs_is_still_one_event(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    async def slow_hook(claims: dict[str, Any]) -> bool:
        await anyio.sleep(0.5)
        return False

    app = JWTAuditMiddleware(echo_app, **rsa_key.options(revocation_check=slow_hook))
    with anyio.move_on_after(0.1):
        await asgi_request(app, "/", headers={"Authorization": f"Bearer {rsa_key.token()}"})
    assert events.only()["status"] is None  # the client left before any answer


async def test_events_do_not_share_their_claims(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = JWTAuditMiddleware(echo_app, **rsa_key.options(log_claims=["tenant"]))
    headers = {"Authorization": f"Bearer {rsa_key.token(tenant='acme')}"}
    await asgi_request(app, "/", headers=headers)
    events[0]["claims"]["tenant"] = "redacted"  # a handler that redacts in place
    await asgi_request(app, "/", headers=headers)
    assert events[1]["claims"] == {"tenant": "acme"}


async def test_websocket_expiry_after_the_app_closed_sends_no_second_close(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    async def closes_then_lingers(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        await anyio.sleep(5)  # cleanup that outlives the token

    app = JWTAuditMiddleware(closes_then_lingers, **rsa_key.options(websocket_expiry="close"))
    sent = await open_socket(app, rsa_key.token(exp=time.time() + 0.5))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[1]["code"] == 1000


async def test_websocket_app_errors_reach_the_server_unwrapped(rsa_key: SigningKey) -> None:
    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise KeyError("the app's own")

    app = JWTAuditMiddleware(broken, **rsa_key.options(websocket_expiry="close"))
    with pytest.raises(KeyError):
        await open_socket(app, rsa_key.token(exp=time.time() + 5))


async def test_websocket_expiring_before_accept_is_one_denial(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    async def slow_to_accept(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await anyio.sleep(5)
        await send({"type": "websocket.accept"})

    app = JWTAuditMiddleware(slow_to_accept, **rsa_key.options(websocket_expiry="close"))
    sent = await open_socket(app, rsa_key.token(exp=time.time() + 0.5))
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert [(e["event"], e["reason"], e["status"]) for e in events] == [("denial", "expired", 403)]
