"""Flask behind JWTAuditWSGIMiddleware.

Run:  JWT_AUDIT_ALGORITHMS=HS256 JWT_AUDIT_SECRET=... flask --app examples.flask_app run
"""

from __future__ import annotations

import logging
import os

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from jwt_audit_middleware import JSONFormatter, JWTAuditWSGIMiddleware, Settings, get_claims


def create_app(settings: Settings) -> Flask:
    """Build the app; ``settings`` would usually be ``Settings.from_env()``."""
    app = Flask(__name__)

    @app.get("/orders")
    def list_orders() -> ResponseReturnValue:
        claims = get_claims(request) or {}
        return jsonify(owner=claims["sub"], remote_user=request.environ.get("REMOTE_USER"))

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(status="ok")

    app.wsgi_app = JWTAuditWSGIMiddleware(app.wsgi_app, settings=settings)  # type: ignore[method-assign]
    return app


if "JWT_AUDIT_ALGORITHMS" in os.environ:
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    logging.getLogger("jwt_audit").addHandler(handler)
    app = create_app(Settings.from_env())
