"""FastAPI with CORSMiddleware, in both orders (the README's CORS section mirrors ``app``).

- ``app``: the documented order.  ``add_middleware`` puts each new layer
  outside the ones before it, so CORSMiddleware, added last, is outermost: it
  answers preflights itself (they never reach the JWT layer) and puts its
  headers on the JWT layer's 401.  No preflight needs passing, so
  ``pass_cors_preflight=False``.
- ``jwt_outermost``: the other order.  ``pass_cors_preflight`` lets the
  preflight through to the CORS layer (audited as an exempt access), so calls
  with a token work, but the 401 carries no CORS headers: the page cannot read it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from jwt_audit_middleware import JWTAuditMiddleware, get_claims

from ._common import PAGE_ORIGIN, attach_sink, settings


def orders_app() -> FastAPI:
    api = FastAPI()

    @api.get("/orders")
    def orders(request: Request) -> dict[str, Any]:
        claims = get_claims(request) or {}
        return {"owner": claims.get("sub"), "orders": [1, 2]}

    return api


attach_sink()

app = orders_app()
app.add_middleware(JWTAuditMiddleware, settings=settings(pass_cors_preflight=False))
app.add_middleware(  # added last: outermost
    CORSMiddleware,
    allow_origins=[PAGE_ORIGIN],
    allow_methods=["GET", "POST"],
    allow_headers=["authorization", "content-type"],
)

jwt_outermost = orders_app()
jwt_outermost.add_middleware(
    CORSMiddleware,
    allow_origins=[PAGE_ORIGIN],
    allow_methods=["GET", "POST"],
    allow_headers=["authorization", "content-type"],
)
jwt_outermost.add_middleware(JWTAuditMiddleware, settings=settings())
