"""A plain WSGI app that has never heard of this package, protected from the environment.

Run:  JWT_AUDIT_ALGORITHMS=RS256 JWT_AUDIT_PUBLIC_KEY="$(cat public.pem)" \
      JWT_AUDIT_ISSUER=https://idp.example.com/ JWT_AUDIT_AUDIENCE=orders-api \
      gunicorn examples.legacy_wsgi:application

The app only reads ``REMOTE_USER``, as it would behind a web server's own
authentication; the middleware sets it to the verified token's ``sub``.  Every
``JWT_AUDIT_*`` variable is an option (``Settings.from_env()``, e.g.
``JWT_AUDIT_PATH_SCOPES='{"/admin": ["admin"]}'``); events go to ``$AUDIT_LOG``
as JSON lines, or to standard output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from examples._logging import log_events
from jwt_audit_middleware import JWTAuditWSGIMiddleware, Settings


def legacy_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The untouched application: PEP 3333, nothing else."""
    body = json.dumps(
        {"remote_user": environ.get("REMOTE_USER"), "path": environ.get("PATH_INFO")}
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def protect(app: Any, environ: dict[str, str] | None = None) -> JWTAuditWSGIMiddleware:
    """``app`` wrapped with settings from the environment (``JWT_AUDIT_*``)."""
    return JWTAuditWSGIMiddleware(app, settings=Settings.from_env(environ))


if "JWT_AUDIT_ALGORITHMS" in os.environ:
    log_events()
    application = protect(legacy_app)


def __getattr__(name: str) -> Any:
    if name == "application":  # `gunicorn examples.legacy_wsgi:application` unconfigured
        raise RuntimeError("set JWT_AUDIT_ALGORITHMS and a key option (see this module's Run line)")
    raise AttributeError(name)
