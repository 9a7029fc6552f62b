"""FastAPI behind JWTAuditMiddleware.

Run:  JWT_AUDIT_ALGORITHMS=RS256 JWT_AUDIT_PUBLIC_KEY="$(cat public.pem)" \
      uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from jwt_audit_middleware import JSONFormatter, JWTAuditMiddleware, Settings, get_claims


def claims(request: Request) -> dict[str, Any]:
    """The verified claims of the current request (the middleware guarantees them)."""
    return get_claims(request) or {}


def create_app(settings: Settings) -> FastAPI:
    """Build the app; ``settings`` would usually be ``Settings.from_env()``."""
    app = FastAPI(title="orders")

    @app.get("/orders")
    def list_orders(user: Annotated[dict[str, Any], Depends(claims)]) -> dict[str, Any]:
        return {"owner": user["sub"], "orders": []}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(JWTAuditMiddleware, settings=settings)
    return app


def log_to_stdout() -> None:
    """Audit events as JSON lines on standard output."""
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    logging.getLogger("jwt_audit").addHandler(handler)


if "JWT_AUDIT_ALGORITHMS" in os.environ:
    log_to_stdout()
    app = create_app(Settings.from_env())
