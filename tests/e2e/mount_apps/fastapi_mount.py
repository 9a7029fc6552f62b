"""FastAPI: a sub-app mounted at ``/v1`` carries the middleware (case 3), under uvicorn."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

from jwt_audit_middleware import JWTAuditMiddleware

from ._common import key_options, log_events

log_events()
app = FastAPI()
sub = FastAPI()


@sub.get("/admin")
def admin(request: Request) -> dict[str, Any]:
    return {"path": request.scope["path"], "root_path": request.scope["root_path"]}


@app.get("/ready")
def ready() -> dict[str, str]:
    """Outside the mount: no middleware, no event."""
    return {"status": "ok"}


sub.add_middleware(JWTAuditMiddleware, path_scopes={"/admin": ["admin"]}, **key_options())
app.mount("/v1", sub)
