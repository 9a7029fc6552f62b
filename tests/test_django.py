"""contrib.django: the MIDDLEWARE entry (sync and async), system checks, start-up errors."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import django
import jwt
import pytest
from asgiref.sync import iscoroutinefunction
from conftest import assert_no_secret
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.test import AsyncClient, AsyncRequestFactory, Client, RequestFactory, override_settings
from django.urls import path

from jwt_audit_middleware import get_claims
from jwt_audit_middleware.contrib.django import JWTAuditMiddleware
from jwt_audit_middleware.request import deny_request
from jwt_audit_middleware.testing import CapturedEvents, SigningKey

MIDDLEWARE = "jwt_audit_middleware.contrib.django.JWTAuditMiddleware"
KEY = SigningKey.generate("ES256", kid="django-1")  # fresh per run
OTHER = SigningKey.generate("ES256", kid="django-1")  # signs forgeries
AUDIENCE = "orders"
JWT_AUDIT = {
    "ALGORITHMS": ["ES256"],
    "PUBLIC_KEY": KEY.public_pem,
    "AUDIENCE": AUDIENCE,
    "EXEMPT_PATHS": ["/health"],
    "OPTIONAL_PATHS": ["/public"],
    "PATH_SCOPES": {"/admin": ["admin"]},
}
RSA_KEY = SigningKey.generate("RS256")  # the example project verifies RS256
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django_project"


# -- the project under test: views and URLs live in this module ---------------


def me(request: HttpRequest) -> JsonResponse:
    claims = request.jwt_claims  # type: ignore[attr-defined]
    token = request.jwt_audit  # type: ignore[attr-defined]
    return JsonResponse(
        {
            "claims": claims,
            "get_claims": get_claims(request),
            "fingerprint_of_token": None if token is None else token.fingerprint,
            "remote_user": request.META.get("REMOTE_USER"),
            "header": request.headers.get("Remote-User"),
            "headers": {
                key: value
                for key, value in request.META.items()
                if key in ("HTTP_REMOTE_USER", "HTTP_X_REMOTE_USER", "HTTP_X_FORWARDED_USER")
            },
        }
    )


async def me_async(request: HttpRequest) -> JsonResponse:
    return me(request)


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")


def needs_write(request: HttpRequest) -> HttpResponse:
    if deny_request(request, "insufficient_scope", required_scopes=("orders:write",)):
        return HttpResponse("should be replaced")
    return HttpResponse("would be replaced, returned False")


async def needs_write_async(request: HttpRequest) -> HttpResponse:
    return needs_write(request)


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(iter([b"a", b"b"]), status=206)


urlpatterns = [
    path("me/", me),
    path("async/me/", me_async),
    path("boom/", boom),
    path("write/", needs_write),
    path("async/write/", needs_write_async),
    path("stream/", stream),
    path("health/", me),
    path("public/", me),
    path("admin/", me),
]

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests-only",
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["jwt_audit_middleware.contrib.django"],
        MIDDLEWARE=[MIDDLEWARE],
        DATABASES={},
        JWT_AUDIT=JWT_AUDIT,
    )
    django.setup()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def good(**claims: Any) -> str:
    return KEY.token({"aud": AUDIENCE, **claims})


# -- sync (WSGI) --------------------------------------------------------------


def test_valid_token_sets_request_attributes(events: CapturedEvents) -> None:
    token = good(sub="alice", scope="orders:read")
    response = Client().get("/me/?q=1", headers={**auth(token), "User-Agent": "pytest"})
    assert response.status_code == 200
    body = response.json()
    assert body["claims"]["sub"] == "alice"
    assert body["get_claims"] == body["claims"]
    assert body["fingerprint_of_token"] == events.only()["token_fingerprint"]
    assert body["remote_user"] == "alice"
    event = events.only()
    assert (event["event"], event["outcome"], event["status"], event["path"]) == (
        "access",
        "allowed",
        200,
        "/me/",
    )
    assert event["subject"] == "alice"
    assert event["scopes"] == ["orders:read"]
    assert event["client_ip"] == "127.0.0.1"
    assert event["user_agent"] == "pytest"
    assert_no_secret(events.text() + response.content.decode(), token)


@pytest.mark.parametrize(
    ("label", "headers", "status", "reason", "challenge"),
    [
        # tokens are minted when the test runs: minted at collection, a valid-looking
        # one expired before a slow run reached it (exp is checked before aud)
        ("missing", dict, 401, "missing_token", 'Bearer realm="api"'),
        ("expired", lambda: auth(good(exp=1)), 401, "expired", 'error="invalid_token"'),
        (
            "forged",
            lambda: auth(OTHER.token(aud=AUDIENCE)),
            401,
            "bad_signature",
            'error="invalid_token"',
        ),
        (
            "audience",
            lambda: auth(KEY.token(aud="billing")),
            401,
            "invalid_audience",
            "invalid_token",
        ),
        ("basic", lambda: {"Authorization": "Basic YTpi"}, 401, "unsupported_scheme", "realm"),
    ],
)
def test_denials_answer_with_the_challenge(
    label: str,
    headers: Callable[[], dict[str, str]],
    status: int,
    reason: str,
    challenge: str,
    events: CapturedEvents,
) -> None:
    response = Client().get("/me/", headers=headers())
    assert response.status_code == status
    assert challenge in response.headers["WWW-Authenticate"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"] == "application/json"
    assert set(response.json()) == {"error", "error_description"}
    event = events.only()
    assert (event["event"], event["reason"], event["status"]) == ("denial", reason, status)


def test_path_scopes_and_view_level_denial(events: CapturedEvents) -> None:
    token = good(sub="bo", scope="orders:read")
    admin = Client().get("/admin/", headers=auth(token))
    write = Client().get("/write/", headers=auth(token))
    assert admin.status_code == write.status_code == 403
    assert admin.headers["WWW-Authenticate"].endswith('scope="admin"')
    assert write.headers["WWW-Authenticate"].endswith('scope="orders:write"')
    assert write.json()["error"] == "insufficient_scope"
    assert b"should be replaced" not in write.content
    rows = [(e["event"], e["reason"], e["status"], e["subject"]) for e in events]
    assert rows == [
        ("denial", "insufficient_scope", 403, "bo"),
        ("denial", "insufficient_scope", 403, "bo"),
    ]


def test_exempt_and_optional_paths(events: CapturedEvents) -> None:
    health = Client().get("/health/")
    anonymous = Client().get("/public/")
    named = Client().get("/public/", headers=auth(good(sub="cy")))
    assert health.json()["claims"] is None
    assert anonymous.json()["claims"] is None
    assert named.json()["claims"]["sub"] == "cy"
    assert [(e["path"], e["status"], e["subject"]) for e in events] == [
        ("/health/", 200, None),
        ("/public/", 200, None),
        ("/public/", 200, "cy"),
    ]


def test_view_exception_is_one_500_event(events: CapturedEvents) -> None:
    response = Client(raise_request_exception=False).get("/boom/", headers=auth(good()))
    assert response.status_code == 500
    assert [(e["event"], e["status"]) for e in events] == [("access", 500)]


def test_exception_through_get_response_is_audited_and_reraised(events: CapturedEvents) -> None:
    def get_response(request: HttpRequest) -> HttpResponse:
        raise KeyError("boom")

    middleware = JWTAuditMiddleware(get_response)
    with pytest.raises(KeyError):
        middleware(RequestFactory().get("/me/", headers=auth(good())))
    assert [(e["event"], e["status"], e["subject"]) for e in events] == [("access", 500, "alice")]


def test_streaming_response_status(events: CapturedEvents) -> None:
    response = Client().get("/stream/", headers=auth(good()))
    assert response.status_code == 206
    assert b"".join(response.streaming_content) == b"ab"  # type: ignore[arg-type]
    assert events.only()["status"] == 206


@override_settings(JWT_AUDIT={**JWT_AUDIT, "MODE": "report-only"})
def test_report_only(events: CapturedEvents) -> None:
    expired = Client().get("/me/", headers=auth(good(exp=1)))
    assert expired.status_code == 200
    assert expired.json()["claims"] is None
    assert [(e["outcome"], e["reason"], e["status"]) for e in events] == [
        ("would_deny", "expired", 401)
    ]


@override_settings(JWT_AUDIT={**JWT_AUDIT, "MODE": "report-only"})
def test_report_only_view_denial_lets_the_view_answer(events: CapturedEvents) -> None:
    # was: deny_request() said "denied" and the challenge replaced nothing, or the reverse
    response = Client().get("/write/", headers=auth(good(sub="bo", scope="orders:read")))
    assert response.status_code == 200
    assert response.content == b"would be replaced, returned False"
    assert [(e["outcome"], e["reason"], e["status"]) for e in events] == [
        ("would_deny", "insufficient_scope", 403)
    ]


def test_rules_follow_path_info_not_the_script_name_prefix(events: CapturedEvents) -> None:
    # mounted at /api (SCRIPT_NAME): /api/admin/ is the app's /admin/, scoped admin
    token = good(sub="bo", scope="orders:read")
    admin = Client(SCRIPT_NAME="/api").get("/admin/", headers=auth(token))
    health = Client(SCRIPT_NAME="/api").get("/health/")
    assert admin.status_code == 403
    assert health.status_code == 200
    assert [(e["path"], e["status"], e["reason"]) for e in events] == [
        ("/api/admin/", 403, "insufficient_scope"),  # the event keeps the full path
        ("/api/health/", 200, None),
    ]


CLIENT_IDENTITY = {"Remote-User": "admin", "X-Forwarded-User": "admin", "X-Remote-User": "admin"}


def test_client_identity_headers_never_reach_the_view(events: CapturedEvents) -> None:
    named = Client().get("/me/", headers={**auth(good(sub="alice")), **CLIENT_IDENTITY})
    anonymous = Client().get("/public/", headers=CLIENT_IDENTITY)
    assert named.json()["remote_user"] == "alice"
    assert named.json()["headers"] == {"HTTP_REMOTE_USER": "alice"}  # the verified one
    assert anonymous.json()["remote_user"] is None
    assert anonymous.json()["headers"] == {}


@pytest.mark.anyio
async def test_client_identity_headers_never_reach_an_async_view() -> None:
    named = await AsyncClient().get(
        "/async/me/", headers={**auth(good(sub="alice")), **CLIENT_IDENTITY}
    )
    anonymous = await AsyncClient().get("/public/", headers=CLIENT_IDENTITY)
    assert named.json()["remote_user"] == "alice"
    assert named.json()["headers"] == {"HTTP_REMOTE_USER": "alice"}
    assert anonymous.json()["remote_user"] is None
    assert anonymous.json()["headers"] == {}


def public_orders(request: HttpRequest) -> HttpResponse:
    if deny_request(request, "insufficient_scope"):
        return HttpResponse("secret order")  # replaced by the challenge
    return HttpResponse("would be replaced")


def cached_headers(get_response: Any) -> Any:
    """An earlier middleware that reads request.headers (corsheaders does)."""

    def middleware(request: HttpRequest) -> HttpResponse:
        request.headers.get("Origin")
        return get_response(request)

    return middleware


urlpatterns.append(path("public/orders/", public_orders))


def test_deny_request_on_an_anonymous_request_answers_missing_token(
    events: CapturedEvents,
) -> None:
    response = Client().get("/public/orders/")
    assert response.status_code == 401
    assert b"secret order" not in response.content
    assert [(e["reason"], e["status"]) for e in events] == [("missing_token", 401)]


@override_settings(MIDDLEWARE=[f"{__name__}.cached_headers", MIDDLEWARE])
def test_identity_headers_are_gone_from_a_cached_request_headers() -> None:
    response = Client().get("/me/", headers={**auth(good(sub="alice")), "Remote-User": "admin"})
    assert response.json()["header"] == "alice"


def test_an_upstream_remote_user_does_not_survive() -> None:
    # mod_wsgi or an outer auth layer set REMOTE_USER; we own it once installed
    without_sub = jwt.encode(
        {"aud": AUDIENCE, "exp": int(time.time()) + 60}, KEY.private, "ES256", {"kid": KEY.kid}
    )
    no_sub = Client(REMOTE_USER="admin").get("/me/", headers=auth(without_sub))
    assert no_sub.status_code == 200
    anonymous = Client(REMOTE_USER="admin").get("/public/")
    assert no_sub.json()["remote_user"] is None
    assert anonymous.json()["remote_user"] is None


def test_revocation_hook_sync() -> None:
    revoked = {"gone"}
    options = {**JWT_AUDIT, "REVOCATION_CHECK": lambda claims: claims.get("jti") in revoked}
    with override_settings(JWT_AUDIT=options):
        assert Client().get("/me/", headers=auth(good(jti="fine"))).status_code == 200
        assert Client().get("/me/", headers=auth(good(jti="gone"))).status_code == 401


# -- flavours: Django builds the chain once, sync or async --------------------


def test_flavour_follows_get_response() -> None:
    def sync_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    async def async_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    sync_mw = JWTAuditMiddleware(sync_view)
    async_mw = JWTAuditMiddleware(async_view)
    assert JWTAuditMiddleware.sync_capable is JWTAuditMiddleware.async_capable is True
    assert isinstance(async_mw, JWTAuditMiddleware)
    assert not iscoroutinefunction(sync_mw)
    assert iscoroutinefunction(async_mw)
    assert not asyncio.iscoroutine(result := sync_mw(RequestFactory().get("/health/")))
    assert result.status_code == 200


@pytest.mark.anyio
async def test_async_client(events: CapturedEvents) -> None:
    client = AsyncClient()
    token = good(sub="dee")
    ok = await client.get("/async/me/", headers=auth(token))
    missing = await client.get("/async/me/")
    write = await client.get("/async/write/", headers=auth(token))
    sync_view = await client.get("/me/", headers=auth(token))
    assert ok.status_code == 200
    assert ok.json()["claims"]["sub"] == "dee"
    assert ok.json()["remote_user"] == "dee"
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert write.status_code == 403
    assert sync_view.json()["claims"]["sub"] == "dee"
    assert [(e["status"], e["reason"]) for e in events] == [
        (200, None),
        (401, "missing_token"),
        (403, "insufficient_scope"),
        (200, None),
    ]


@pytest.mark.anyio
@override_settings(DEBUG=True)
async def test_async_chain_is_not_adapted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="django.request")
    response = await AsyncClient().get("/async/me/", headers=auth(good()))
    assert response.status_code == 200
    adapted = [r.getMessage() for r in caplog.records if "adapted for middleware" in r.getMessage()]
    assert adapted == []  # Django would say "... adapted for middleware <ours>" otherwise


@pytest.mark.anyio
async def test_async_revocation_hook_is_awaited_on_the_loop(events: CapturedEvents) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def check(claims: Any) -> bool:
        loops.append(asyncio.get_running_loop())
        return claims.get("jti") == "gone"

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(status=204)

    with override_settings(JWT_AUDIT={**JWT_AUDIT, "REVOCATION_CHECK": check}):
        middleware = JWTAuditMiddleware(view)
    factory = AsyncRequestFactory()
    ok = await middleware(factory.get("/me/", headers=auth(good(jti="fine"))))
    gone = await middleware(factory.get("/me/", headers=auth(good(jti="gone"))))
    assert (ok.status_code, gone.status_code) == (204, 401)
    assert loops == [asyncio.get_running_loop()] * 2
    assert [e["reason"] for e in events] == [None, "revoked"]


@pytest.mark.anyio
async def test_async_exception_is_audited_and_reraised(events: CapturedEvents) -> None:
    async def view(request: HttpRequest) -> HttpResponse:
        raise KeyError("boom")

    middleware = JWTAuditMiddleware(view)
    with pytest.raises(KeyError):
        await middleware(AsyncRequestFactory().get("/me/", headers=auth(good())))
    assert [(e["event"], e["status"]) for e in events] == [("access", 500)]


# -- configuration: start-up errors and system checks -------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "JWT_AUDIT: JWT_AUDIT: is not set"),
        ({**JWT_AUDIT, "AUDIANCE": "x"}, "audiance: unknown option; did you mean 'audience'?"),
        ({"ALGORITHMS": ["ES256"]}, "JWT_AUDIT: "),
        ("ES256", "expected a mapping"),
    ],
)
def test_bad_configuration_is_improperly_configured(value: object, message: str) -> None:
    with override_settings(JWT_AUDIT=value):
        with pytest.raises(ImproperlyConfigured) as raised:
            JWTAuditMiddleware(me)
        assert message in str(raised.value)
        with pytest.raises(ImproperlyConfigured):
            Client().get("/health/")  # the handler loads its middleware: start-up


@pytest.mark.parametrize(
    ("value", "check_id", "text"),
    [
        (None, "jwt_audit.E001", "JWT_AUDIT is not set"),
        (["ES256"], "jwt_audit.E002", "must be a dict"),
        ({**JWT_AUDIT, "ALGORITMS": ["ES256"]}, "jwt_audit.E003", "did you mean 'algorithms'"),
        ({**JWT_AUDIT, "MODE": "strict"}, "jwt_audit.E004", "mode: expected"),
        ({"ALGORITHMS": ["ES256"]}, "jwt_audit.E004", "JWT_AUDIT: "),
    ],
)
def test_system_checks(value: object, check_id: str, text: str) -> None:
    with override_settings(JWT_AUDIT=value), pytest.raises(SystemCheckError) as raised:
        call_command("check")
    assert check_id in str(raised.value)
    assert text in str(raised.value)


def test_checks_pass_and_warn_without_middleware(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("check")
    assert "no issues" in capsys.readouterr().out
    with override_settings(MIDDLEWARE=[]):
        call_command("check")
    assert "jwt_audit.W001" in capsys.readouterr().err


PARTNER = SigningKey.generate("ES256", kid="partner-1")
TWO_PROVIDERS = {
    "ALGORITHMS": ["ES256"],
    "PROVIDERS": [
        {"issuer": "https://corp.example/", "public_key": KEY.public_pem},
        {"issuer": "https://partner.example/", "public_key": PARTNER.public_pem},
    ],
}


def test_check_warns_when_providers_share_the_plain_sub(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with override_settings(JWT_AUDIT=TWO_PROVIDERS):
        call_command("check")
    assert "jwt_audit.W002" in capsys.readouterr().err
    with override_settings(JWT_AUDIT={**TWO_PROVIDERS, "IDENTITY": "{iss}|{sub}"}):
        call_command("check")
    assert "jwt_audit.W002" not in capsys.readouterr().err


def test_providers_with_an_identity_template_keep_their_admins_apart() -> None:
    with override_settings(JWT_AUDIT={**TWO_PROVIDERS, "IDENTITY": "{iss}|{sub}"}):
        corp = Client().get(
            "/me/", headers=auth(KEY.token(iss="https://corp.example/", sub="admin"))
        )
        partner = Client().get(
            "/me/", headers=auth(PARTNER.token(iss="https://partner.example/", sub="admin"))
        )
    assert corp.json()["remote_user"] == "https://corp.example/|admin"
    assert partner.json()["remote_user"] == "https://partner.example/|admin"


def _manage(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(EXAMPLE.parent.parent)]),
        "AUDIT_LOG": str(tmp_path / "audit.jsonl"),
        **env,
    }
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_example_manage_py_check_reports_a_misspelled_option(tmp_path: Path) -> None:
    env = {"JWT_PUBLIC_KEY": RSA_KEY.public_pem or ""}
    ok = _manage(["check"], tmp_path, **env)
    assert ok.returncode == 0, ok.stderr
    assert "no issues" in ok.stdout
    (tmp_path / "typo_settings.py").write_text(
        "from orders_site.settings import *  # noqa: F403\n"
        "JWT_AUDIT = {**JWT_AUDIT, 'LEEWAYY': 5}  # noqa: F405\n"
    )
    typo = _manage(["check", "--settings=typo_settings"], tmp_path, **env)
    assert typo.returncode == 1
    assert "(jwt_audit.E003) JWT_AUDIT: leewayy: unknown option; did you mean 'leeway'?" in (
        typo.stderr
    )


# -- keys from a JWKS URL: an unknown kid is refetched once ------------------


def test_unknown_kid_refetches_keys_sync_and_async(rsa_key: SigningKey) -> None:
    from jwks_server import JWKSServer

    from jwt_audit_middleware.testing import jwks_document

    rotated = SigningKey.generate("ES256", kid="rotated-1")
    server = JWKSServer(jwks_document(rsa_key))
    options = {
        "ALGORITHMS": ["RS256", "ES256"],
        "JWKS_URL": server.url,
        "JWKS_MIN_REFRESH_SECONDS": 0,
    }

    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(get_claims(request)["sub"])  # type: ignore[index]

    async def async_view(request: HttpRequest) -> HttpResponse:
        return view(request)

    try:
        with override_settings(JWT_AUDIT=options):
            sync_mw = JWTAuditMiddleware(view)
            async_mw = JWTAuditMiddleware(async_view)
        try:
            server.set("ok", jwks_document(rsa_key, rotated))  # the IdP rotates
            token = rotated.token(sub="rita")
            request = RequestFactory().get("/me/", headers=auth(token))
            assert sync_mw(request).content == b"rita"
            async_request = AsyncRequestFactory().get("/me/", headers=auth(token))
            response = asyncio.run(async_mw(async_request))
            assert response.content == b"rita"
        finally:
            sync_mw._gate.close()
            async_mw._gate.close()
    finally:
        server.close()


# -- abuse detection (contract §9): the same check in both flavours ------------------------

ABUSE = {**JWT_AUDIT, "ABUSE_DETECTION": {"denials_per_ip": 2, "lockout_seconds": 60}}


@override_settings(JWT_AUDIT=ABUSE)
def test_lockout_sync(events: CapturedEvents) -> None:
    client = Client(REMOTE_ADDR="192.0.2.61")  # one client: one middleware, one store
    forged = OTHER.token(aud=AUDIENCE)
    assert [client.get("/me/", headers=auth(forged)).status_code for _ in range(2)] == [401, 401]
    locked = client.get("/me/", headers=auth(good()))
    assert locked.status_code == 429
    assert locked["Retry-After"] == "60"
    assert [e["reason"] for e in events if e["event"] == "alert"] == ["denial_burst_ip"]
    assert [e["reason"] for e in events if e["event"] == "denial"][-1] == "locked_out"


@pytest.mark.anyio
@override_settings(JWT_AUDIT=ABUSE)
async def test_lockout_async(events: CapturedEvents) -> None:
    client = AsyncClient(REMOTE_ADDR="192.0.2.62")
    forged = OTHER.token(aud=AUDIENCE)
    for _ in range(2):
        assert (await client.get("/me/", headers=auth(forged))).status_code == 401
    assert (await client.get("/me/", headers=auth(good()))).status_code == 429
    assert [e["reason"] for e in events if e["event"] == "alert"] == ["denial_burst_ip"]


@override_settings(JWT_AUDIT={**JWT_AUDIT, "PASS_CORS_PREFLIGHT": True})
def test_a_cors_preflight_reaches_the_view_unauthenticated(events: CapturedEvents) -> None:
    # the documented order puts django-cors-headers above us, and it answers preflights
    # itself; with the option on, a preflight passes us unauthenticated
    response = Client().options(
        "/me/", headers={"Origin": "http://127.0.0.1:9", "Access-Control-Request-Method": "GET"}
    )
    assert response.status_code == 200
    assert events.only()["detail"] == "CORS preflight"


def test_by_default_a_function_view_never_sees_a_tokenless_options(events: CapturedEvents) -> None:
    response = Client().options(
        "/me/", headers={"Origin": "http://127.0.0.1:9", "Access-Control-Request-Method": "GET"}
    )
    assert response.status_code == 401  # a function view would answer OPTIONS as a GET
    assert events.only()["reason"] == "missing_token"
