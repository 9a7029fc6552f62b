"""Settings: sessions, auth by ``RemoteUserMiddleware`` after ``JWTAuditMiddleware``.

Everything run-specific comes from the environment (all required, so a stray
run never writes a database or an audit log into the working tree):

- ``JWT_PUBLIC_KEY``: the run's RS256 public key (PEM);
- ``JWT_AUDIENCE``: the expected ``aud``;
- ``REMOTE_USER_SITE_DB``: the SQLite database file (migrated, with a superuser);
- ``AUDIT_LOG``: the JSON-lines file the audit events go to.
"""

import os

SECRET_KEY = "remote-user-e2e-not-a-secret"  # a test site on 127.0.0.1
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "jwt_audit_middleware.contrib.django.JWTAuditMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.RemoteUserMiddleware",
]
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.RemoteUserBackend"]
ROOT_URLCONF = "remote_user_site.urls"
WSGI_APPLICATION = "remote_user_site.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["REMOTE_USER_SITE_DB"],
    }
}

JWT_AUDIT = {
    "ALGORITHMS": ["RS256"],
    "PUBLIC_KEY": os.environ["JWT_PUBLIC_KEY"],
    "AUDIENCE": os.environ["JWT_AUDIENCE"],
    "OPTIONAL_PATHS": ["/optional"],
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
