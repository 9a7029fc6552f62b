"""Users' own code type-checks: the documented calls pass ``mypy --strict``."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

USER_CODE = """
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware

from jwt_audit_middleware import JWTAuditMiddleware, Settings

app = Starlette()
app.add_middleware(JWTAuditMiddleware, algorithms=["RS256"], public_key="-----BEGIN ...")
app.add_middleware(JWTAuditMiddleware, settings=Settings(algorithms=["HS256"], secret="s" * 32))
api = FastAPI(middleware=[Middleware(JWTAuditMiddleware, algorithms=["RS256"], jwks_url="https://x")])
"""


def test_add_middleware_type_checks_strictly(tmp_path: Path) -> None:
    # was: "app" was not positional-only, so Starlette's _MiddlewareFactory protocol
    # (whose first parameter is) refused add_middleware(JWTAuditMiddleware, ...)
    source = tmp_path / "user_app.py"
    source.write_text(USER_CODE)
    out, err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    assert status == 0, out + err
