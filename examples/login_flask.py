"""A Flask login view that issues tokens and audits every login attempt.

``POST /login`` with ``username`` and ``password`` (form or JSON): a good pair
gets a token (``TokenIssuer`` emits ``token_issued``) and a ``login_succeeded``
event; a bad one gets 401 and a ``login_failed`` event.  Neither event holds the
password or the token.

Run:  JWT_LOGIN_SECRET_FILE=secret.bin flask --app examples.login_flask run
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from jwt_audit_middleware import AuditLogger, JSONFormatter, TokenIssuer

CheckPassword = Callable[[str, str], bool]


def create_app(issuer: TokenIssuer, check_password: CheckPassword) -> Flask:
    """The app; ``check_password(username, password)`` is your user store's check."""
    app = Flask(__name__)
    audit = AuditLogger()

    @app.post("/login")
    def login() -> ResponseReturnValue:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):  # not JSON, or JSON that is not an object
            data = request.form
        username = str(data.get("username", ""))
        password = str(data.get("password", ""))
        client_ip = request.remote_addr
        if not username or not check_password(username, password):
            audit.login_failed(
                username or None,
                reason="bad_credentials",
                client_ip=client_ip,
                method="POST",
                path="/login",
            )
            return jsonify(error="invalid_grant"), 401
        audit.login_succeeded(username, client_ip=client_ip, method="POST", path="/login")
        token = issuer.issue(username, scope="orders:read", client_ip=client_ip)
        return jsonify(access_token=token, token_type="Bearer", expires_in=int(issuer.lifetime))

    return app


def demo_users(users: dict[str, str]) -> CheckPassword:
    """A toy user store for the example (use your real one)."""

    def check(username: str, password: str) -> bool:
        expected = users.get(username)
        return expected is not None and hmac.compare_digest(expected, password)

    return check


if "JWT_LOGIN_SECRET_FILE" in os.environ:
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter())
    logging.getLogger("jwt_audit").addHandler(handler)
    app = create_app(
        TokenIssuer(
            algorithm="HS256",
            secret_file=os.environ["JWT_LOGIN_SECRET_FILE"],
            issuer="https://login.example/",
            audience="orders-api",
        ),
        demo_users({"alice": os.environ.get("JWT_LOGIN_DEMO_PASSWORD", "change me")}),
    )
