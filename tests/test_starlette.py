"""The ASGI middleware in front of a real Starlette app (httpx ASGITransport)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from conftest import ALGORITHMS, assert_no_secret
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from jwt_audit_middleware import JWTAuditMiddleware, VerifiedToken, get_claims
from jwt_audit_middleware.testing import CapturedEvents, SigningKey, jwks_document

pytestmark = pytest.mark.anyio
ISSUER = "https://idp.test/"
AUDIENCE = "orders"


async def whoami(request: Request) -> JSONResponse:
    token = request.scope.get("jwt_audit")
    return JSONResponse(
        {
            "claims": get_claims(request),
            "scope_claims": token.claims if isinstance(token, VerifiedToken) else None,
            "authenticated": request.user.is_authenticated,
            "identity": request.user.identity if request.user.is_authenticated else None,
            "display_name": request.user.display_name,
            "scopes": request.auth.scopes,
        }
    )


@requires("orders:write")
async def write_order(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"written by {request.user.identity}")


async def stream(request: Request) -> StreamingResponse:
    async def body() -> Any:
        for chunk in (b"a", b"b", b"c"):
            yield chunk

    return StreamingResponse(body(), status_code=207)


async def boom(request: Request) -> None:
    raise RuntimeError("app bug")


def make_app(key: SigningKey, **options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/whoami", whoami),
            Route("/orders", write_order, methods=["POST"]),
            Route("/admin/users", whoami),
            Route("/health", whoami),
            Route("/public/feed", whoami),
            Route("/stream", stream),
            Route("/boom", boom),
        ]
    )
    defaults: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "exempt_paths": ["/health"],
        "optional_paths": ["/public"],
        "path_scopes": {"/admin": ["admin"]},
    }
    app.add_middleware(JWTAuditMiddleware, **key.options(**{**defaults, **options}))
    return app


def good_token(key: SigningKey, **claims: Any) -> str:
    return key.token(
        {"iss": ISSUER, "aud": AUDIENCE, "scope": "orders:read orders:write", **claims}
    )


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(
        app=app, raise_app_exceptions=False, client=("198.51.100.9", 4000)
    )
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_valid_token_reaches_every_place(
    alg: str, keys: dict[str, SigningKey], events: CapturedEvents
) -> None:
    key = keys[alg]
    token = good_token(key, sub="alice")
    async with client(make_app(key)) as http:
        response = await http.get(
            "/whoami?secret=1",
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": "pytest/1",
                "X-Request-ID": "req-42",
            },
        )
    assert response.status_code == 200
    body = response.json()
    assert body["claims"]["sub"] == "alice"
    assert body["scope_claims"] == body["claims"]
    assert body["authenticated"] is True
    assert body["identity"] == body["display_name"] == "alice"
    assert sorted(body["scopes"]) == ["orders:read", "orders:write"]
    event = events.only()
    assert event["event"] == "access"
    assert event["outcome"] == "allowed"
    assert event["reason"] is None
    assert event["status"] == 200
    assert event["path"] == "/whoami"
    assert event["method"] == "GET"
    assert event["protocol"] == "http"
    assert event["client_ip"] == "198.51.100.9"
    assert event["user_agent"] == "pytest/1"
    assert event["request_id"] == "req-42"
    assert event["subject"] == "alice"
    assert event["issuer"] == ISSUER
    assert event["audience"] == [AUDIENCE]
    assert event["scopes"] == ["orders:read", "orders:write"]
    assert event["alg"] == alg
    assert event["kid"] == key.kid
    assert event["token_fingerprint"].startswith("sha256:")
    assert event["duration_ms"] >= 0
    assert_no_secret(events.text(), token)
    assert_no_secret(response.text, token)


async def test_requires_works_unchanged(rsa_key: SigningKey, events: CapturedEvents) -> None:
    app = make_app(rsa_key)
    async with client(app) as http:
        ok = await http.post(
            "/orders", headers={"Authorization": "Bearer " + good_token(rsa_key, sub="bo")}
        )
        weak = good_token(rsa_key, scope="orders:read")
        forbidden = await http.post("/orders", headers={"Authorization": f"Bearer {weak}"})
    assert ok.status_code == 200
    assert ok.text == "written by bo"
    assert forbidden.status_code == 403  # Starlette's own requires() decided
    assert [e["status"] for e in events] == [200, 403]
    assert [e["outcome"] for e in events] == ["allowed", "allowed"]


DENIALS = [
    ("missing", None, {}, 401, "missing_token", 'Bearer realm="api"'),
    ("basic", "Basic YWxpY2U6cHc=", {}, 401, "unsupported_scheme", 'Bearer realm="api"'),
    ("tab", "Bearer\tabc.def.ghi", {}, 400, "invalid_request", 'error="invalid_request"'),
    ("garbage", "Bearer not-a-jwt", {}, 401, "malformed_token", 'error="invalid_token"'),
    ("too_large", "Bearer " + "a" * 9000, {}, 401, "token_too_large", 'error="invalid_token"'),
]


@pytest.mark.parametrize(
    ("label", "authorization", "options", "status", "reason", "challenge"),
    DENIALS,
    ids=[row[0] for row in DENIALS],
)
async def test_header_denials(
    label: str,
    authorization: str | None,
    options: dict[str, Any],
    status: int,
    reason: str,
    challenge: str,
    rsa_key: SigningKey,
    events: CapturedEvents,
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with client(make_app(rsa_key, **options)) as http:
        response = await http.get("/whoami", headers=headers)
    assert response.status_code == status
    assert challenge in response.headers["www-authenticate"]
    assert response.headers["www-authenticate"].startswith('Bearer realm="api"')
    if reason in ("missing_token", "unsupported_scheme"):
        assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert response.headers["cache-control"] == "no-store"
    assert set(response.json()) == {"error", "error_description"}
    event = events.only()
    assert (event["event"], event["outcome"], event["reason"], event["status"]) == (
        "denial",
        "denied",
        reason,
        status,
    )
    assert event["subject"] is None
    if authorization:
        assert_no_secret(events.text() + response.text + str(response.headers), authorization[7:])


def token_denials(key: SigningKey, forger: SigningKey) -> list[tuple[str, str, str]]:
    return [
        ("expired", good_token(key, exp=1), "expired"),
        ("forged", forger.token({"iss": ISSUER, "aud": AUDIENCE}), "bad_signature"),
        ("wrong_issuer", good_token(key, iss="https://evil.test/"), "invalid_issuer"),
        ("wrong_audience", good_token(key, aud="billing"), "invalid_audience"),
        ("future", good_token(key, nbf=4_000_000_000), "not_yet_valid"),
        (
            "hs256",
            SigningKey.generate("HS256").token({"iss": ISSUER, "aud": AUDIENCE}),
            "algorithm_not_allowed",
        ),
    ]


async def test_token_denials_carry_identity_only_after_signature(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    rows = token_denials(rsa_key, other_rsa_key)
    app = make_app(rsa_key)
    async with client(app) as http:
        for _, token, _ in rows:
            response = await http.get("/whoami", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401
            assert 'error="invalid_token"' in response.headers["www-authenticate"]
            assert_no_secret(response.text + str(response.headers), token)
    assert [e["reason"] for e in events] == [row[2] for row in rows]
    by_reason = {e["reason"]: e for e in events}
    assert by_reason["expired"]["subject"] == "alice"  # signature verified, then exp failed
    assert by_reason["invalid_audience"]["issuer"] == ISSUER
    assert by_reason["bad_signature"]["subject"] is None  # forged: nothing is trusted
    assert by_reason["bad_signature"]["token_id"] is None
    for _, token, _ in rows:
        assert_no_secret(events.text(), token)


async def test_insufficient_scope_is_403_with_scope_param(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    async with client(make_app(rsa_key)) as http:
        response = await http.get(
            "/admin/users", headers={"Authorization": "Bearer " + good_token(rsa_key)}
        )
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="The token lacks the scope this resource requires.", scope="admin"'
    )
    assert response.json()["error"] == "insufficient_scope"
    event = events.only()
    assert event["reason"] == "insufficient_scope"
    assert event["subject"] == "alice"
    assert event["scopes"] == ["orders:read", "orders:write"]


async def test_exempt_and_optional_paths(rsa_key: SigningKey, events: CapturedEvents) -> None:
    async with client(make_app(rsa_key)) as http:
        health = await http.get("/health")
        anonymous = await http.get("/public/feed")
        bad = await http.get("/public/feed", headers={"Authorization": "Bearer a.b.c"})
        named = await http.get(
            "/public/feed", headers={"Authorization": "Bearer " + good_token(rsa_key)}
        )
    assert health.status_code == 200
    assert health.json()["authenticated"] is False
    assert anonymous.status_code == 200
    assert anonymous.json()["claims"] is None
    assert bad.status_code == 401  # a token on an optional path is still verified
    assert named.json()["identity"] == "alice"
    assert [(e["path"], e["status"], e["reason"]) for e in events] == [
        ("/health", 200, None),
        ("/public/feed", 200, None),
        ("/public/feed", 401, "malformed_token"),
        ("/public/feed", 200, None),
    ]


async def test_report_only_lets_requests_through(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = make_app(rsa_key, mode="report-only")
    async with client(app) as http:
        expired = await http.get(
            "/whoami", headers={"Authorization": "Bearer " + good_token(rsa_key, exp=1)}
        )
        scoped = await http.get(
            "/admin/users", headers={"Authorization": "Bearer " + good_token(rsa_key)}
        )
    assert expired.status_code == 200
    assert expired.json()["claims"] is None  # an invalid token never reaches the app
    assert scoped.status_code == 200
    assert scoped.json()["identity"] == "alice"  # valid token, would lack a scope
    assert [(e["event"], e["outcome"], e["reason"], e["status"]) for e in events] == [
        ("denial", "would_deny", "expired", 401),
        ("denial", "would_deny", "insufficient_scope", 403),
    ]


@pytest.mark.parametrize("hook_kind", ["sync", "async"])
async def test_revocation_hook(hook_kind: str, rsa_key: SigningKey, events: CapturedEvents) -> None:
    revoked = {"bad-jti"}
    seen: list[str] = []

    def sync_check(claims: Any) -> bool:
        seen.append(claims["jti"])
        return claims["jti"] in revoked

    async def async_check(claims: Any) -> bool:
        return sync_check(claims)

    app = make_app(rsa_key, revocation_check=sync_check if hook_kind == "sync" else async_check)
    async with client(app) as http:
        ok = await http.get(
            "/whoami", headers={"Authorization": "Bearer " + good_token(rsa_key, jti="ok-jti")}
        )
        no = await http.get(
            "/whoami", headers={"Authorization": "Bearer " + good_token(rsa_key, jti="bad-jti")}
        )
    assert (ok.status_code, no.status_code) == (200, 401)
    assert seen == ["ok-jti", "bad-jti"]
    assert [e["reason"] for e in events] == [None, "revoked"]
    assert events[1]["token_id"] == "bad-jti"


async def test_failing_hook_is_internal_error_not_a_crash(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    def broken(claims: Any) -> bool:
        raise ConnectionError("redis down")

    async with client(make_app(rsa_key, revocation_check=broken)) as http:
        response = await http.get(
            "/whoami", headers={"Authorization": "Bearer " + good_token(rsa_key)}
        )
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    internal = [r for r in events.records if r.name == "jwt_audit.internal"]
    assert len(internal) == 1
    assert internal[0].exc_info is not None
    assert [e["reason"] for e in events] == ["internal_error"]


async def test_streaming_and_failing_apps_emit_one_event(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    headers = {"Authorization": "Bearer " + good_token(rsa_key)}
    async with client(make_app(rsa_key)) as http:
        streamed = await http.get("/stream", headers=headers)
        failed = await http.get("/boom", headers=headers)
    assert streamed.status_code == 207
    assert streamed.content == b"abc"
    assert failed.status_code == 500
    assert [(e["path"], e["status"]) for e in events] == [("/stream", 207), ("/boom", 500)]


async def test_hostile_strings_stay_on_one_line(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    token = good_token(
        rsa_key, sub="eve\r\n\x1b[31mINFO forged line\u2028", message="m", args="a", exc_info="e"
    )
    app = make_app(rsa_key, log_claims=["message", "args", "exc_info"])
    async with client(app) as http:
        response = await http.get(
            "/whoami", headers={"Authorization": f"Bearer {token}", "User-Agent": "ua\x7f\x1b]0;x"}
        )
    assert response.status_code == 200
    event = events.only()
    assert event["subject"] == "eve\\x0d\\x0a\\x1b[31mINFO forged line\\u2028"
    assert event["claims"] == {"message": "m", "args": "a", "exc_info": "e"}
    assert event["user_agent"] == "ua\\x7f\\x1b]0;x"
    for line in events.lines:
        assert "\n" not in line
        assert "\r" not in line
        if line.startswith("{"):
            assert json.loads(line)["subject"] == event["subject"]


async def test_jwks_selects_by_kid(keys: dict[str, SigningKey], events: CapturedEvents) -> None:
    rsa, ec = keys["RS256"], keys["ES256"]
    app = Starlette(routes=[Route("/whoami", whoami)])
    app.add_middleware(
        JWTAuditMiddleware, algorithms=["RS256", "ES256"], jwks=jwks_document(rsa, ec)
    )
    async with client(app) as http:
        statuses = [
            (await http.get("/whoami", headers={"Authorization": f"Bearer {token}"})).status_code
            for token in (rsa.token(), ec.token(), rsa.token(headers={"kid": "retired"}))
        ]
    assert statuses == [200, 200, 401]
    assert [e["reason"] for e in events] == [None, None, "unknown_key"]
    assert [e["kid"] for e in events] == [rsa.kid, ec.kid, "retired"]


async def test_method_rules_reach_the_middleware(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = make_app(rsa_key, path_scopes={"POST /orders": ["orders:write"]})
    weak = good_token(rsa_key, scope="orders:read")
    async with client(app) as http:
        refused = await http.post("/orders", headers={"Authorization": f"Bearer {weak}"})
        read = await http.get("/whoami", headers={"Authorization": f"Bearer {weak}"})
    assert (refused.status_code, read.status_code) == (403, 200)
    assert 'scope="orders:write"' in refused.headers["www-authenticate"]
    assert [(e["method"], e["reason"]) for e in events] == [
        ("POST", "insufficient_scope"),
        ("GET", None),
    ]
