"""Settings: no database, ``JWTAuditMiddleware`` only; run-specific values from the environment."""

import os

SECRET_KEY = "mount-e2e-not-a-secret"  # a test site on 127.0.0.1
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["jwt_audit_middleware.contrib.django.JWTAuditMiddleware"]
ROOT_URLCONF = "mount_apps.mount_site.urls"
WSGI_APPLICATION = "mount_apps.mount_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}

JWT_AUDIT = {
    "ALGORITHMS": ["RS256"],
    "PUBLIC_KEY": os.environ["MOUNT_PUBLIC_KEY"],
    "AUDIENCE": os.environ["MOUNT_AUDIENCE"],
    "EXEMPT_PATHS": ["/health"],
    "PATH_SCOPES": {"/admin": ["admin"]},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "jwt_audit_middleware.JSONFormatter"}},
    "handlers": {
        "audit": {
            "class": "logging.FileHandler",
            "filename": os.environ["AUDIT_LOG"],
            "formatter": "json",
        },
    },
    "loggers": {"jwt_audit": {"handlers": ["audit"], "level": "INFO", "propagate": False}},
}
