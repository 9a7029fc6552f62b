"""FastAPI behind JWTAuditMiddleware, with the contrib.fastapi dependencies.

Run:  JWT_AUDIT_ALGORITHMS=RS256 JWT_AUDIT_PUBLIC_KEY="$(cat public.pem)" \
      JWT_AUDIT_ISSUER=https://idp.example.com/ JWT_AUDIT_AUDIENCE=orders-api \
      JWT_AUDIT_EXEMPT_PATHS=/health,/docs,/openapi.json uvicorn examples.fastapi_app:app

(``public.pem`` and a token to try: ``make_token.py`` in the README's quick start.)

Every ``JWT_AUDIT_*`` variable is an option (``Settings.from_env()``); events go to
``$AUDIT_LOG`` as JSON lines, or to standard output.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, WebSocket

from examples._logging import log_events
from jwt_audit_middleware import JWTAuditMiddleware, Settings
from jwt_audit_middleware.contrib.fastapi import Claims, require_scopes


def create_app(settings: Settings) -> FastAPI:
    """Build the app; ``settings`` would usually be ``Settings.from_env()``."""
    app = FastAPI(title="orders")

    @app.get("/orders")
    def list_orders(claims: Claims) -> dict[str, Any]:
        return {"owner": claims["sub"], "orders": []}

    @app.post("/orders", status_code=201, dependencies=[require_scopes("orders:write")])
    def create_order(claims: Claims) -> dict[str, Any]:
        return {"created_by": claims["sub"]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/ws")
    async def updates(websocket: WebSocket, claims: Claims) -> None:
        await websocket.accept()
        await websocket.send_json({"hello": claims["sub"]})
        await websocket.close()

    app.add_middleware(JWTAuditMiddleware, settings=settings)
    return app


if "JWT_AUDIT_ALGORITHMS" in os.environ:
    log_events()
    app = create_app(Settings.from_env())


def __getattr__(name: str) -> Any:
    if name == "app":  # `uvicorn examples.fastapi_app:app` without the configuration
        raise RuntimeError("set JWT_AUDIT_ALGORITHMS and a key option (see this module's Run line)")
    raise AttributeError(name)
