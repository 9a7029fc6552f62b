"""Settings of the example project: ``JWT_AUDIT``, ``MIDDLEWARE`` and ``LOGGING``.

The public key, the audience and the audit log path come from the environment
so the same project runs anywhere (and under the end-to-end tests):

- ``JWT_PUBLIC_KEY``: the identity provider's RS256 public key (PEM);
- ``JWT_AUDIENCE``: the expected ``aud`` (default ``orders-api``, as the README's tokens);
- ``JWT_ISSUER``: the expected ``iss`` (not checked unless set; the README's tokens
  say ``https://idp.example.com/``);
- ``AUDIT_LOG``: the JSON-lines file the audit events go to (default ``audit.jsonl``).
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True

INSTALLED_APPS = [
    "jwt_audit_middleware.contrib.django",  # system checks: manage.py check
]
MIDDLEWARE = [
    "jwt_audit_middleware.contrib.django.JWTAuditMiddleware",  # first: audits every response
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "orders_site.urls"
WSGI_APPLICATION = "orders_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}

JWT_AUDIT = {
    "ALGORITHMS": ["RS256"],
    "PUBLIC_KEY": os.environ.get("JWT_PUBLIC_KEY", ""),
    "AUDIENCE": os.environ.get("JWT_AUDIENCE", "orders-api"),
    "ISSUER": os.environ.get("JWT_ISSUER") or None,
    "EXEMPT_PATHS": ["/health", "/admin"],  # /admin: Django's admin logs in by itself
    "PATH_SCOPES": {"/admin-api": ["admin"]},
    "LOG_CLAIMS": ["tenant"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"jwt": {"()": "jwt_audit_middleware.JSONFormatter"}},
    "handlers": {
        "audit": {
            "class": "logging.FileHandler",
            "filename": os.environ.get("AUDIT_LOG", "audit.jsonl"),
            "formatter": "jwt",
        },
    },
    "loggers": {"jwt_audit": {"handlers": ["audit"], "level": "INFO", "propagate": False}},
}
