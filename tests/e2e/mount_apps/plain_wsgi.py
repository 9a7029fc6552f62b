"""Plain PEP 3333 apps in ``JWTAuditWSGIMiddleware``, served by gunicorn.

- ``script_name``: ``exempt_paths=["/health"]`` (case 1, a client's
  ``SCRIPT_NAME`` header believed by ``gunicorn --forwarded-allow-ips``);
- ``optional_scoped``: ``optional_paths=["/api"]`` and
  ``path_scopes={"/api/admin": ["admin"]}`` (case 7).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from jwt_audit_middleware import JWTAuditWSGIMiddleware

from ._common import key_options, log_events


def echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Every path answers 200 with what the app routes on and who the user is."""
    body = json.dumps(
        {
            "script_name": environ.get("SCRIPT_NAME"),
            "path_info": environ.get("PATH_INFO"),
            "remote_user": environ.get("REMOTE_USER"),
        }
    ).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


log_events()
script_name = JWTAuditWSGIMiddleware(echo, exempt_paths=["/health"], **key_options())
optional_scoped = JWTAuditWSGIMiddleware(
    echo, optional_paths=["/api"], path_scopes={"/api/admin": ["admin"]}, **key_options()
)
