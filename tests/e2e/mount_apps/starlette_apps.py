"""Starlette apps in ``JWTAuditMiddleware``, served by uvicorn.

- ``admin_scoped``: ``path_scopes={"/admin": ["admin"]}``, for
  ``uvicorn --root-path /api`` (case 2);
- ``root_rule``: ``path_scopes={"/": ["api"], "/admin": ["admin"]}`` (case 6);
- ``optional_scoped``: ``optional_paths=["/api"]`` and
  ``path_scopes={"/api/admin": ["admin"]}`` (case 7).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jwt_audit_middleware import JWTAuditMiddleware

from ._common import key_options, log_events


async def echo(request: Request) -> JSONResponse:
    """What the app routed on, and who the user is."""
    user = request.scope.get("user")
    return JSONResponse(
        {
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "sub": getattr(user, "claims", {}).get("sub"),
        }
    )


def build(paths: list[str], **options: object) -> Starlette:
    return Starlette(
        routes=[Route(path, echo) for path in paths],
        middleware=[Middleware(JWTAuditMiddleware, **key_options(), **options)],
    )


log_events()
admin_scoped = build(["/admin", "/orders"], path_scopes={"/admin": ["admin"]})
root_rule = build(["/orders", "/admin"], path_scopes={"/": ["api"], "/admin": ["admin"]})
optional_scoped = build(
    ["/api/admin", "/api/public"], optional_paths=["/api"], path_scopes={"/api/admin": ["admin"]}
)
