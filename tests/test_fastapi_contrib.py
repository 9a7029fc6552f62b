"""contrib.fastapi: claims and scope dependencies, OpenAPI bearer scheme, websockets."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from conftest import assert_no_secret
from fastapi import FastAPI, Security, WebSocket
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from jwt_audit_middleware import JWTAuditMiddleware
from jwt_audit_middleware.contrib.fastapi import (
    Claims,
    OptionalClaims,
    RequireScopes,
    require_scopes,
)
from jwt_audit_middleware.testing import CapturedEvents, SigningKey

pytestmark = pytest.mark.anyio


def make_app(key: SigningKey, *, middleware: bool = True, **options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    async def me(claims: Claims) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    @app.get("/orders", dependencies=[Security(RequireScopes("orders:read"))])
    def orders() -> dict[str, Any]:
        return {"orders": []}

    @app.post("/orders")
    def create(
        claims: Annotated[dict[str, Any], require_scopes("orders:write", "orders:read")],
    ) -> Any:
        return {"created_by": claims["sub"]}

    @app.get("/public/feed")
    def feed(claims: OptionalClaims) -> dict[str, Any]:
        return {"sub": None if claims is None else claims["sub"]}

    @app.get("/public/strict")
    def strict(claims: Claims) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, claims: Claims) -> None:
        await websocket.accept()
        await websocket.send_json({"sub": claims["sub"]})
        await websocket.close()

    @app.websocket("/ws/admin")
    async def ws_admin(
        websocket: WebSocket, claims: Annotated[dict[str, Any], require_scopes("admin")]
    ) -> None:
        await websocket.accept()
        await websocket.close()

    if middleware:
        opts = {"optional_paths": ["/public"], "exempt_paths": ["/openapi.json"], **options}
        app.add_middleware(JWTAuditMiddleware, **key.options(**opts))
    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_claims_dependency(rsa_key: SigningKey, events: CapturedEvents) -> None:
    token = rsa_key.token(sub="alice")
    async with client(make_app(rsa_key)) as http:
        ok = await http.get("/me", headers=bearer(token))
        missing = await http.get("/me")
    assert ok.status_code == 200
    assert ok.json() == {"sub": "alice"}
    assert missing.status_code == 401  # the middleware, not the dependency, answered
    assert missing.headers["www-authenticate"] == 'Bearer realm="api"'
    assert [(e["subject"], e["status"], e["reason"]) for e in events] == [
        ("alice", 200, None),
        (None, 401, "missing_token"),
    ]
    assert_no_secret(events.text(), token)


async def test_require_scopes_denies_like_path_scopes(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    reader = rsa_key.token(sub="bob", scope="orders:read")
    async with client(make_app(rsa_key)) as http:
        read = await http.get("/orders", headers=bearer(reader))
        write = await http.post("/orders", headers=bearer(reader))
        none = await http.get("/orders", headers=bearer(rsa_key.token(sub="carol")))
        both = await http.post(
            "/orders", headers=bearer(rsa_key.token(sub="dan", scope="orders:read orders:write"))
        )
    assert read.status_code == 200
    assert write.status_code == 403
    assert write.headers["www-authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="The token lacks the scope this resource requires.", '
        'scope="orders:write orders:read"'
    )
    assert write.json()["error"] == "insufficient_scope"
    assert write.headers["cache-control"] == "no-store"
    assert none.status_code == 403
    assert 'scope="orders:read"' in none.headers["www-authenticate"]
    assert both.json() == {"created_by": "dan"}
    rows = [(e["event"], e["outcome"], e["reason"], e["status"], e["subject"]) for e in events]
    assert rows == [
        ("access", "allowed", None, 200, "bob"),
        ("denial", "denied", "insufficient_scope", 403, "bob"),
        ("denial", "denied", "insufficient_scope", 403, "carol"),
        ("access", "allowed", None, 200, "dan"),
    ]
    assert events[1]["scopes"] == ["orders:read"]


async def test_same_event_shape_as_path_scopes(rsa_key: SigningKey, events: CapturedEvents) -> None:
    token = rsa_key.token(sub="bob", scope="orders:read", jti="j1")
    async with client(make_app(rsa_key)) as http:
        await http.post("/orders", headers=bearer(token))
    async with client(make_app(rsa_key, path_scopes={"/orders": ["orders:write"]})) as http:
        await http.post("/orders", headers=bearer(token))
    by_dependency, by_path = events
    volatile = {"time", "duration_ms", "request_id", "detail"}
    assert by_dependency.keys() == by_path.keys()
    assert {k: v for k, v in by_dependency.items() if k not in volatile} == {
        k: v for k, v in by_path.items() if k not in volatile
    }
    assert by_dependency["token_id"] == "j1"
    assert isinstance(by_dependency["detail"], str)


async def test_optional_claims_and_strict_dependency_on_optional_path(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    async with client(make_app(rsa_key)) as http:
        anonymous = await http.get("/public/feed")
        named = await http.get("/public/feed", headers=bearer(rsa_key.token(sub="eve")))
        strict = await http.get("/public/strict")
    assert anonymous.json() == {"sub": None}
    assert named.json() == {"sub": "eve"}
    assert strict.status_code == 401
    assert strict.headers["www-authenticate"] == 'Bearer realm="api"'  # the middleware's challenge
    assert strict.json()["error"] == "missing_token"
    assert [(e["status"], e["reason"]) for e in events] == [
        (200, None),
        (200, None),
        (401, "missing_token"),
    ]
    assert events[2]["detail"] == "the route requires a verified token"


async def test_without_middleware_fails_closed(rsa_key: SigningKey) -> None:
    app = make_app(rsa_key, middleware=False)
    async with client(app) as http:
        response = await http.get("/me", headers=bearer(rsa_key.token()))
    assert response.status_code == 500


async def test_openapi_shows_bearer_scheme(rsa_key: SigningKey) -> None:
    async with client(make_app(rsa_key)) as http:
        schema = (await http.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"] == {
        "JWTBearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT access token, verified by jwt_audit_middleware.",
        }
    }
    assert schema["paths"]["/me"]["get"]["security"] == [{"JWTBearer": []}]
    assert schema["paths"]["/orders"]["post"]["security"] == [{"JWTBearer": []}]
    assert schema["paths"]["/orders"]["get"]["security"] == [{"JWTBearer": []}]


def test_require_scopes_validates_names() -> None:
    with pytest.raises(ValueError, match="scope names"):
        RequireScopes()
    with pytest.raises(ValueError, match="scope names"):
        RequireScopes("a b")
    assert RequireScopes("a", "b", "a").scopes == ("a", "b")
    assert repr(RequireScopes("admin")) == "RequireScopes('admin')"


def test_websocket_refused_without_token_and_accepted_with_one(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = make_app(rsa_key)
    with TestClient(app) as test_client:
        with pytest.raises(WebSocketDenialResponse) as refused:
            with test_client.websocket_connect("/ws"):
                pass
        token = rsa_key.token(sub="frank")
        with test_client.websocket_connect("/ws", headers=bearer(token)) as ws:
            assert ws.receive_json() == {"sub": "frank"}
        with pytest.raises(WebSocketDenialResponse) as unscoped:
            with test_client.websocket_connect("/ws/admin", headers=bearer(token)):
                pass
    assert refused.value.status_code == 401  # the real challenge (denial-response extension)
    assert refused.value.headers["www-authenticate"] == 'Bearer realm="api"'
    assert unscoped.value.status_code == 403  # the dependency's refusal, answered by the middleware
    assert 'error="insufficient_scope", ' in unscoped.value.headers["www-authenticate"]
    assert unscoped.value.headers["www-authenticate"].endswith('scope="admin"')
    rows = [(e["protocol"], e["event"], e["reason"], e["status"], e["subject"]) for e in events]
    assert rows == [
        ("websocket", "denial", "missing_token", 401, None),
        ("websocket", "access", None, 101, "frank"),
        ("websocket", "denial", "insufficient_scope", 403, "frank"),
    ]
    assert events[2]["detail"] == "the token lacks a required scope"


async def test_report_only_lets_scope_dependencies_through(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = make_app(rsa_key, mode="report-only")
    async with client(app) as http:
        response = await http.get("/orders", headers=bearer(rsa_key.token(scope="other")))
    assert response.status_code == 200
    assert response.json() == {"orders": []}
    assert [(e["event"], e["outcome"], e["reason"], e["status"]) for e in events] == [
        ("denial", "would_deny", "insufficient_scope", 403)
    ]
