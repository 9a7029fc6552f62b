"""Flask with the JWTAudit extension, configured from ``app.config``.

Run:  FLASK_JWT_AUDIT_ALGORITHMS=RS256 FLASK_JWT_AUDIT_PUBLIC_KEY="$(cat public.pem)" \
      FLASK_JWT_AUDIT_ISSUER=https://idp.example.com/ FLASK_JWT_AUDIT_AUDIENCE=orders-api \
      FLASK_JWT_AUDIT_EXEMPT_PATHS=/health flask --app examples.flask_app run
 or:  gunicorn 'examples.flask_app:create_app()'  (same variables)

``app.config.from_prefixed_env()`` turns ``FLASK_JWT_AUDIT_*`` variables into the
``JWT_AUDIT_*`` keys the extension reads; events go to ``$AUDIT_LOG`` as JSON
lines, or to standard output.
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from examples._logging import log_events
from jwt_audit_middleware import Settings
from jwt_audit_middleware.contrib.flask import JWTAudit, current_claims


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app: from ``settings`` when given, else from ``FLASK_*`` variables."""
    app = Flask(__name__)

    @app.get("/orders")
    def list_orders() -> ResponseReturnValue:
        return jsonify(owner=current_claims["sub"], remote_user=request.environ.get("REMOTE_USER"))

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(status="ok")

    if settings is None:
        app.config.from_prefixed_env()
        log_events()
    JWTAudit(app, settings=settings)
    return app
