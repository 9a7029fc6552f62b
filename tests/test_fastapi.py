"""FastAPI: add_middleware, dependencies reading the claims, and the examples."""

from __future__ import annotations

import httpx
import pytest
from conftest import assert_no_secret

from examples import fastapi_app, flask_app
from jwt_audit_middleware import Settings
from jwt_audit_middleware.testing import CapturedEvents, SigningKey

pytestmark = pytest.mark.anyio


async def test_fastapi_example(keys: dict[str, SigningKey], events: CapturedEvents) -> None:
    key = keys["ES256"]
    app = fastapi_app.create_app(Settings(**key.options(exempt_paths=["/health", "/openapi.json"])))
    transport = httpx.ASGITransport(app=app)
    token = key.token(sub="dana")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        ok = await http.get("/orders", headers={"Authorization": f"Bearer {token}"})
        denied = await http.get("/orders")
        health = await http.get("/health")
        schema = await http.get("/openapi.json")
    assert ok.status_code == 200
    assert ok.json() == {"owner": "dana", "orders": []}
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"] == 'Bearer realm="api"'
    assert health.json() == {"status": "ok"}
    assert schema.status_code == 200
    assert [(e["path"], e["status"], e["reason"]) for e in events] == [
        ("/orders", 200, None),
        ("/orders", 401, "missing_token"),
        ("/health", 200, None),
        ("/openapi.json", 200, None),
    ]
    assert_no_secret(events.text(), token)


def test_flask_example(keys: dict[str, SigningKey], events: CapturedEvents) -> None:
    key = keys["HS256"]
    app = flask_app.create_app(Settings(**key.options(exempt_paths=["/health"])))
    client = app.test_client()
    token = key.token(sub="erin")
    with client.get("/orders", headers={"Authorization": f"Bearer {token}"}) as ok:
        assert list(events) == []  # the access event waits for close(), as PEP 3333 servers call it
    expired = client.get("/orders", headers={"Authorization": "Bearer " + key.token(expires_in=-5)})
    assert ok.status_code == 200
    assert ok.get_json() == {"owner": "erin", "remote_user": "erin"}
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert [(e["status"], e["reason"]) for e in events] == [(200, None), (401, "expired")]
    assert_no_secret(events.text(), token, key.secret.hex())
