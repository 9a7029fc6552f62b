"""contrib.drf under Django's default middleware, and CSRF with bearer tokens.

A real Django REST framework app behind ``JWTAuditMiddleware`` and the
``MIDDLEWARE`` of ``django-admin startproject`` (``CsrfViewMiddleware``
included), driven by Django's test client with CSRF checks enforced, as a
browser-less API client meets them.  Django is configured once per process
(``tests/test_django.py`` may have done it first), so every test here runs
under ``override_settings`` of this module's project.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.checks.registry import registry
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from jwt_audit_middleware.testing import CapturedEvents, SigningKey

pytest.importorskip("rest_framework")

if not settings.configured:  # first: configure Django as tests/test_django.py expects to
    import test_django  # noqa: F401

from rest_framework.decorators import (
    api_view,
    authentication_classes,
    permission_classes,
)
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jwt_audit_middleware.contrib.drf import (
    HasScope,
    JWTAuditAuthentication,
    TokenUser,
)

KEY = SigningKey.generate("ES256", kid="drf-1")  # fresh per run
AUDIENCE = "orders-api"
DEFAULT_MIDDLEWARE = [  # django-admin startproject's, with ours first
    "jwt_audit_middleware.contrib.django.JWTAuditMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
JWT_AUDIT = {
    "ALGORITHMS": ["ES256"],
    "PUBLIC_KEY": KEY.public_pem,
    "AUDIENCE": AUDIENCE,
    "EXEMPT_PATHS": ["/health", "/admin"],
    "OPTIONAL_PATHS": ["/public"],
}
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["jwt_audit_middleware.contrib.drf.JWTAuditAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["jwt_audit_middleware.contrib.drf.HasScope"],
}


# -- the project: DRF views and plain Django views ----------------------------


# A project's REST_FRAMEWORK defaults apply to views defined after settings load;
# here Django may have been configured by another module first, so the views
# name their classes (what REST_FRAMEWORK above would make the default).
AUTHENTICATION = [JWTAuditAuthentication]


class Orders(APIView):  # type: ignore[misc]
    authentication_classes = AUTHENTICATION
    permission_classes = (HasScope,)
    required_scopes = ("orders:read",)

    def get(self, request: Request) -> Response:
        return Response(
            {
                "user": str(request.user),
                "user_type": type(request.user).__name__,
                "is_authenticated": request.user.is_authenticated,
                "scopes": sorted(request.auth.scopes),
                "sub": request.auth.claims["sub"],
            }
        )


@api_view(["POST"])  # type: ignore[misc]
@authentication_classes(AUTHENTICATION)  # type: ignore[misc]
@permission_classes([HasScope.require("orders:write")])  # type: ignore[misc]
def create_order(request: Request) -> Response:
    return Response({"created_by": request.user.identity, "data": request.data}, status=201)


@api_view(["GET"])  # type: ignore[misc]
@authentication_classes(AUTHENTICATION)  # type: ignore[misc]
@permission_classes([IsAuthenticated])  # type: ignore[misc]
def drf_only(request: Request) -> Response:
    return Response({"user": str(request.user)})


def plain_post(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"owner": request.jwt_claims["sub"]})  # type: ignore[attr-defined]


urlpatterns = [
    path("orders/", Orders.as_view()),
    path("orders/new/", create_order),
    path("public/orders/", Orders.as_view()),
    path("public/drf-only/", drf_only),
    path("plain/", plain_post),
    path("plain/exempt/", csrf_exempt(plain_post)),
]

PROJECT = {
    "ROOT_URLCONF": __name__,
    "INSTALLED_APPS": [
        "django.contrib.contenttypes",
        "django.contrib.auth",
        "django.contrib.sessions",
        "django.contrib.messages",
        "rest_framework",
        "jwt_audit_middleware.contrib.django",
    ],
    "MIDDLEWARE": DEFAULT_MIDDLEWARE,
    "SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies",  # no database
    "JWT_AUDIT": JWT_AUDIT,
    "REST_FRAMEWORK": REST_FRAMEWORK,
}


@pytest.fixture(autouse=True)
def project() -> Iterator[None]:
    # the apps installed here register system checks (auth's) that must not
    # outlive them: other modules run `manage.py check` without those apps
    checks = registry.registered_checks.copy(), registry.deployment_checks.copy()
    try:
        with override_settings(**PROJECT):
            yield
    finally:
        registry.registered_checks, registry.deployment_checks = checks


def auth(**claims: Any) -> dict[str, str]:
    return {"Authorization": "Bearer " + KEY.token({"aud": AUDIENCE, **claims})}


def client() -> Client:
    return Client(enforce_csrf_checks=True)  # as Django checks a real client


def rows(events: CapturedEvents) -> list[tuple[Any, ...]]:
    return [(e["event"], e["outcome"], e["reason"], e["status"], e["subject"]) for e in events]


# -- authentication: the middleware's verdict, never verified twice ----------


def test_request_user_and_auth_come_from_the_verified_token(events: CapturedEvents) -> None:
    response = client().get("/orders/", headers=auth(sub="alice", scope="orders:read extra"))
    assert response.status_code == 200
    assert response.json() == {
        "user": "alice",
        "user_type": "TokenUser",
        "is_authenticated": True,
        "scopes": ["extra", "orders:read"],
        "sub": "alice",
    }
    assert rows(events) == [("access", "allowed", None, 200, "alice")]


def test_authenticate_reads_the_middlewares_token_not_the_header() -> None:
    from jwt_audit_middleware.model import VerifiedToken

    token = VerifiedToken({"sub": "bo"}, {"alg": "ES256"}, "sha256:0", identity="bo")
    request = HttpRequest()
    request.META["HTTP_AUTHORIZATION"] = "Bearer not-even-a-token"
    request.jwt_audit = token  # type: ignore[attr-defined]
    user, auth_ = JWTAuditAuthentication().authenticate(Request(request))  # type: ignore[misc]
    assert auth_ is token
    assert isinstance(user, TokenUser)
    assert (user.identity, user.pk, user.get_username(), user.has_perm("x")) == (
        "bo",
        "bo",
        "bo",
        False,
    )
    request.jwt_audit = None  # type: ignore[attr-defined]  # an exempt path
    assert JWTAuditAuthentication().authenticate(Request(request)) is None


def test_without_the_middleware_authentication_fails_loudly() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="not in MIDDLEWARE"):
        JWTAuditAuthentication().authenticate(Request(HttpRequest()))


def test_get_user_maps_the_token_to_a_project_user() -> None:
    from jwt_audit_middleware.model import VerifiedToken

    class ProjectUsers(JWTAuditAuthentication):
        def get_user(self, token: VerifiedToken) -> Any:
            return {"username": token.identity}  # stands in for a Django user

    request = HttpRequest()
    request.jwt_audit = VerifiedToken({}, {"alg": "ES256"}, "sha256:1", identity="cy")  # type: ignore[attr-defined]
    assert ProjectUsers().authenticate(Request(request))[0] == {"username": "cy"}


# -- HasScope: refusals answered and audited by the middleware ----------------


def test_missing_scope_is_the_middlewares_403(events: CapturedEvents) -> None:
    response = client().get("/orders/", headers=auth(sub="bo", scope="orders:write"))
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="api", error=')
    assert response.headers["WWW-Authenticate"].endswith('scope="orders:read"')
    assert response.json()["error"] == "insufficient_scope"
    assert rows(events) == [("denial", "denied", "insufficient_scope", 403, "bo")]


@pytest.mark.anyio
async def test_missing_scope_under_asgi(events: CapturedEvents) -> None:
    response = await AsyncClient(enforce_csrf_checks=True).get(
        "/orders/", headers=auth(sub="bo", scope="nothing")
    )
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"].endswith('scope="orders:read"')
    assert rows(events) == [("denial", "denied", "insufficient_scope", 403, "bo")]


def test_no_token_on_an_optional_path_is_the_middlewares_401(events: CapturedEvents) -> None:
    response = client().get("/public/orders/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json()["error"] == "missing_token"
    assert rows(events) == [("denial", "denied", "missing_token", 401, None)]


def test_drfs_own_permission_answers_401_with_the_bearer_challenge(
    events: CapturedEvents,
) -> None:
    # IsAuthenticated (not HasScope): DRF answers, 401 thanks to authenticate_header
    with override_settings(JWT_AUDIT={**JWT_AUDIT, "REALM": "orders"}):
        response = client().get("/public/drf-only/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="orders"'
    assert rows(events) == [("access", "allowed", None, 401, None)]


def test_report_only_lets_the_view_run_and_says_would_deny(events: CapturedEvents) -> None:
    with override_settings(JWT_AUDIT={**JWT_AUDIT, "MODE": "report-only"}):
        response = client().get("/orders/", headers=auth(sub="bo", scope="nothing"))
    assert response.status_code == 200
    assert response.json()["user"] == "bo"
    assert rows(events) == [("denial", "would_deny", "insufficient_scope", 403, "bo")]


def test_require_rejects_bad_scope_names() -> None:
    with pytest.raises(ValueError, match="scope names"):
        HasScope.require("two words")
    with pytest.raises(ValueError, match="scope names"):
        HasScope.require()
    assert HasScope.require("a", "b").require("b", "c").scopes == ("a", "b", "c")


# -- CSRF: a bearer-token POST under Django's default middleware --------------


def test_drf_post_with_a_bearer_token_needs_no_csrf_token(events: CapturedEvents) -> None:
    response = client().post(
        "/orders/new/",
        {"item": "tea"},
        content_type="application/json",
        headers=auth(sub="alice", scope="orders:write"),
    )
    assert response.status_code == 201
    assert response.json() == {"created_by": "alice", "data": {"item": "tea"}}
    assert rows(events) == [("access", "allowed", None, 201, "alice")]


def test_plain_django_view_post_needs_csrf_exempt(events: CapturedEvents) -> None:
    headers = auth(sub="alice")
    refused = client().post("/plain/", headers=headers)
    exempt = client().post("/plain/exempt/", headers=headers)
    assert refused.status_code == 403  # Django's CSRF failure page, not ours
    assert "WWW-Authenticate" not in refused.headers
    assert exempt.status_code == 200
    assert exempt.json() == {"owner": "alice"}
    assert [(e["status"], e["subject"]) for e in events] == [(403, "alice"), (200, "alice")]


def test_a_forged_cross_site_post_never_reaches_an_exempt_view(events: CapturedEvents) -> None:
    # what CSRF is about: the browser sends cookies, never an Authorization header
    client_ = client()
    client_.cookies["sessionid"] = "the-victims-session"
    response = client_.post("/plain/exempt/", headers={"Origin": "https://evil.example"})
    assert response.status_code == 401
    assert rows(events) == [("denial", "denied", "missing_token", 401, None)]


def test_admin_is_exempt_by_the_documented_setting(events: CapturedEvents) -> None:
    response = client().get("/admin/")
    assert response.status_code == 404  # no admin in this project: reached Django, not 401
    assert rows(events) == [("access", "allowed", None, 404, None)]
