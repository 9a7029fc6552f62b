"""Flask with the ``JWTAudit`` extension, served by gunicorn: every path answers 200.

The answer comes from a ``before_request`` hook, before Flask's routing, so an
odd path (``//a``, ``/a%00b``) is neither redirected nor a 404: what the client
gets is what the middleware decided.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify

from jwt_audit_middleware.contrib.flask import JWTAudit, current_claims

from ._common import attach_sink, settings

attach_sink()
app = Flask(__name__)


@app.before_request
def echo() -> Response:
    return jsonify(sub=current_claims.get("sub"))


JWTAudit(app, settings=settings())
