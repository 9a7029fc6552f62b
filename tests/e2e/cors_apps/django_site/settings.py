"""Settings: ``CorsMiddleware`` above ``JWTAuditMiddleware``, as the README's CORS section says.

From the environment (all required): ``CORS_PAGE_ORIGIN``, ``CORS_PUBLIC_KEY``
and ``AUDIT_LOG``, as for the other CORS apps (``cors_apps/_common.py``).
"""

import os

SECRET_KEY = "cors-e2e-not-a-secret"  # a test site on 127.0.0.1
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
DATABASES: dict[str, object] = {}

INSTALLED_APPS = ["corsheaders"]
MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",  # above ours: answers preflights, decorates our 401
    "jwt_audit_middleware.contrib.django.JWTAuditMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "cors_apps.django_site.urls"

CORS_ALLOWED_ORIGINS = [os.environ["CORS_PAGE_ORIGIN"]]  # "authorization" is a default header

JWT_AUDIT = {
    "ALGORITHMS": ["RS256"],
    "PUBLIC_KEY": os.environ["CORS_PUBLIC_KEY"],
    "PASS_CORS_PREFLIGHT": False,  # CorsMiddleware above answers every preflight
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "audit": {
            "class": "jwt_audit_middleware.sinks.JSONLinesHandler",
            "path": os.environ["AUDIT_LOG"],
            "flush_interval": 0.05,
        },
    },
    "loggers": {"jwt_audit": {"handlers": ["audit"], "level": "INFO", "propagate": False}},
}
