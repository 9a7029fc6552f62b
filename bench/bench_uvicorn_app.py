"""The app ``bench_uvicorn.py`` serves: ``bare`` and ``audited`` (same routes)."""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from jwt_audit_middleware import JWTAuditMiddleware
from jwt_audit_middleware.sinks import JSONLinesHandler


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def make_app() -> Starlette:
    return Starlette(routes=[Route("/hello", hello)])


bare = make_app()
audited = make_app()
if os.environ.get("BENCH_PUBLIC_KEY"):
    logger = logging.getLogger("jwt_audit")
    if not os.environ.get("BENCH_NO_HANDLER"):
        logger.addHandler(JSONLinesHandler(os.environ["BENCH_EVENTS"]))
    logger.propagate = False
    audited.add_middleware(
        JWTAuditMiddleware, algorithms=["RS256"], public_key=os.environ["BENCH_PUBLIC_KEY"]
    )
