"""Flask with the ``JWTAudit`` extension, mounted at ``/api`` by ``DispatcherMiddleware`` (case 4).

Served by gunicorn; the root app answers 404 to everything outside ``/api``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from jwt_audit_middleware import Settings
from jwt_audit_middleware.contrib.flask import JWTAudit, current_claims

from ._common import key_options, log_events

log_events()
api = Flask(__name__)
JWTAudit(
    api,
    settings=Settings(exempt_paths=["/health"], path_scopes={"/admin": ["admin"]}, **key_options()),
)


def saw() -> dict[str, Any]:
    return {
        "script_name": request.environ.get("SCRIPT_NAME"),
        "path_info": request.environ.get("PATH_INFO"),
        "sub": current_claims.get("sub"),
    }


@api.get("/health")
def health() -> dict[str, Any]:
    return saw()


@api.get("/admin")
def admin() -> dict[str, Any]:
    return saw()


@api.get("/orders")
def orders() -> dict[str, Any]:
    return saw()


application = DispatcherMiddleware(NotFound(), {"/api": api})
