"""A misspelt option (``algoritms``) given to middleware the framework builds lazily (case 8).

Neither app may be served: uvicorn must stop at the lifespan startup.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware

from jwt_audit_middleware import JWTAuditMiddleware

PEM = os.environ["MOUNT_PUBLIC_KEY"]

fastapi_app = FastAPI()
fastapi_app.add_middleware(JWTAuditMiddleware, algoritms=["RS256"], public_key=PEM)

starlette_app = Starlette(
    middleware=[Middleware(JWTAuditMiddleware, algoritms=["RS256"], public_key=PEM)]
)
