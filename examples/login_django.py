"""A Django login view that issues tokens and audits every login attempt.

In a project, ``login`` would live in ``views.py`` and use
``django.contrib.auth.authenticate``; here the user check is a parameter so the
file runs on its own (``python examples/login_django.py runserver`` with
``JWT_LOGIN_SECRET_FILE`` set).  Neither event holds the password or the token.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
from collections.abc import Callable

from django.conf import settings

if not settings.configured:  # a one-file project; a real one has settings.py
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.urandom(32).hex(),
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        LOGGING={
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"jwt": {"()": "jwt_audit_middleware.JSONFormatter"}},
            "handlers": {"audit": {"class": "logging.StreamHandler", "formatter": "jwt"}},
            "loggers": {"jwt_audit": {"handlers": ["audit"], "level": "INFO"}},
        },
    )

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_POST

from jwt_audit_middleware import AuditLogger, TokenIssuer

CheckPassword = Callable[[str, str], bool]
audit = AuditLogger()


def make_login_view(
    issuer: TokenIssuer, check_password: CheckPassword
) -> Callable[[HttpRequest], HttpResponse]:
    """The view; ``check_password`` stands in for ``authenticate(request, ...)``."""

    @require_POST
    def login(request: HttpRequest) -> HttpResponse:
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        data = data or request.POST
        username = str(data.get("username", ""))
        password = str(data.get("password", ""))
        client_ip = request.META.get("REMOTE_ADDR")
        request_id = request.headers.get("X-Request-ID")
        if not username or not check_password(username, password):
            audit.login_failed(
                username or None,
                reason="bad_credentials",
                client_ip=client_ip,
                request_id=request_id,
                method=request.method,
                path=request.path,
            )
            return JsonResponse({"error": "invalid_grant"}, status=401)
        audit.login_succeeded(
            username,
            client_ip=client_ip,
            request_id=request_id,
            method=request.method,
            path=request.path,
        )
        token = issuer.issue(username, client_ip=client_ip, request_id=request_id)
        return JsonResponse({"access_token": token, "token_type": "Bearer"})

    return login


def _demo_check(username: str, password: str) -> bool:
    expected = os.environ.get("JWT_LOGIN_DEMO_PASSWORD", "change me")
    return username == "alice" and hmac.compare_digest(expected, password)


urlpatterns = []
if "JWT_LOGIN_SECRET_FILE" in os.environ:
    _issuer = TokenIssuer(
        algorithm="HS256",
        secret_file=os.environ["JWT_LOGIN_SECRET_FILE"],
        issuer="https://login.example/",
        audience="orders-api",
    )
    urlpatterns.append(path("login", make_login_view(_issuer, _demo_check)))


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
