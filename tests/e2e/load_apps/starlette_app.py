"""Starlette in ``JWTAuditMiddleware``, served by uvicorn: every path answers 200."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jwt_audit_middleware import JWTAuditMiddleware

from ._common import attach_sink, settings


async def echo(request: Request) -> JSONResponse:
    """Who the middleware says the user is (None on the exempt path)."""
    user = request.scope.get("user")
    return JSONResponse({"sub": getattr(user, "claims", {}).get("sub")})


attach_sink()
app = Starlette(
    routes=[
        Route("/", echo, methods=["GET", "POST"]),
        Route("/{rest:path}", echo, methods=["GET", "POST"]),
    ],
    middleware=[Middleware(JWTAuditMiddleware, settings=settings())],
)
