"""contrib.flask: JWTAudit(app) / init_app(app) from app.config, and current_claims."""

from __future__ import annotations

from typing import Any

import flask
import pytest
from conftest import assert_no_secret

from jwt_audit_middleware import ConfigurationError, JWTAuditWSGIMiddleware
from jwt_audit_middleware.contrib.flask import JWTAudit, current_claims
from jwt_audit_middleware.testing import CapturedEvents, SigningKey


def make_app(config: dict[str, Any]) -> flask.Flask:
    app = flask.Flask("jwt_audit_flask_ext_test")
    app.config.update(config)

    @app.get("/me")
    def me() -> dict[str, Any]:
        return {"claims": dict(current_claims), "truthy": bool(current_claims)}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"claims": dict(current_claims), "truthy": bool(current_claims)}

    return app


def prefixed(key: SigningKey, **extra: Any) -> dict[str, Any]:
    return {f"JWT_AUDIT_{name.upper()}": value for name, value in key.options(**extra).items()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get(app: flask.Flask, path: str, token: str | None = None) -> Any:
    """GET and close the response, as a WSGI server does (the access event waits for it)."""
    response = app.test_client().get(path, headers=bearer(token) if token else {})
    response.close()
    return response


def test_prefixed_config_keys(keys: dict[str, SigningKey], events: CapturedEvents) -> None:
    key = keys["HS256"]
    app = make_app(prefixed(key, audience="api", exempt_paths=["/health"]))
    JWTAudit(app)
    assert isinstance(app.wsgi_app, JWTAuditWSGIMiddleware)
    assert app.extensions["jwt_audit"] is app.wsgi_app
    assert app.wsgi_app.settings.audience == ("api",)
    token = key.token(sub="alice", aud="api")
    ok = get(app, "/me", token)
    wrong_audience = get(app, "/me", key.token(aud="billing"))
    health = get(app, "/health")
    assert ok.status_code == 200
    assert ok.get_json()["claims"]["sub"] == "alice"
    assert ok.get_json()["truthy"] is True
    assert wrong_audience.status_code == 401
    assert 'error="invalid_token"' in wrong_audience.headers["WWW-Authenticate"]
    assert health.get_json() == {"claims": {}, "truthy": False}
    assert [(e["path"], e["status"], e["reason"]) for e in events] == [
        ("/me", 200, None),
        ("/me", 401, "invalid_audience"),
        ("/health", 200, None),
    ]
    assert_no_secret(events.text() + ok.get_data(as_text=True), token, key.secret.hex())


def test_one_dict_and_app_factory(rsa_key: SigningKey, events: CapturedEvents) -> None:
    extension = JWTAudit()
    app = make_app({"JWT_AUDIT": {"ALGORITHMS": ["RS256"], "PUBLIC_KEY": rsa_key.public_pem}})
    extension.init_app(app)
    assert get(app, "/me", rsa_key.token(sub="bo")).get_json()["claims"]["sub"] == "bo"
    missing = get(app, "/me")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert [e["reason"] for e in events] == [None, "missing_token"]


def test_dict_and_prefixed_keys_combine(rsa_key: SigningKey) -> None:
    app = make_app(
        {
            "JWT_AUDIT": {"algorithms": ["RS256"], "public_key": rsa_key.public_pem},
            "JWT_AUDIT_REALM": "orders",
        }
    )
    JWTAudit(app)
    response = get(app, "/me")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="orders"'


def test_explicit_settings_skip_config(rsa_key: SigningKey) -> None:
    from jwt_audit_middleware import Settings

    app = make_app({"JWT_AUDIT_ALGORITMS": "ignored"})
    JWTAudit(app, settings=Settings(**rsa_key.options(realm="given")))
    assert get(app, "/me").headers["WWW-Authenticate"] == 'Bearer realm="given"'


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "JWT_AUDIT: no configuration"),
        ({"JWT_AUDIT_ALGORITMS": ["RS256"]}, "algoritms: unknown option; did you mean"),
        ({"JWT_AUDIT": ["RS256"]}, "JWT_AUDIT: expected a dict"),
        (
            {"JWT_AUDIT": {"algorithms": ["HS256"]}, "JWT_AUDIT_ALGORITHMS": ["HS256"]},
            "JWT_AUDIT_ALGORITHMS: 'algorithms' is also given in JWT_AUDIT",
        ),
        ({"JWT_AUDIT_ALGORITHMS": ["HS256"], "JWT_AUDIT_SECRET": "short"}, "secret"),
    ],
)
def test_bad_config_fails_at_init(config: dict[str, Any], message: str) -> None:
    app = make_app(config)
    with pytest.raises(ConfigurationError) as raised:
        JWTAudit(app)
    assert message in str(raised.value)
    assert not isinstance(app.wsgi_app, JWTAuditWSGIMiddleware)


def test_init_twice_is_refused(rsa_key: SigningKey) -> None:
    app = make_app(prefixed(rsa_key))
    JWTAudit(app)
    with pytest.raises(RuntimeError, match="already"):
        JWTAudit(app)


def test_current_claims_outside_a_request() -> None:
    with pytest.raises(RuntimeError, match="request context"):
        dict(current_claims)


def test_text_lists_from_the_environment_are_split(rsa_key: SigningKey) -> None:
    # FLASK_JWT_AUDIT_EXEMPT_PATHS=/health,/docs arrives as text: it must not be one path
    from jwt_audit_middleware.contrib.flask import settings_from_config

    settings = settings_from_config(
        {
            "JWT_AUDIT_ALGORITHMS": "RS256",
            "JWT_AUDIT_PUBLIC_KEY": rsa_key.public_pem,
            "JWT_AUDIT_EXEMPT_PATHS": "/health,/docs",
            "JWT_AUDIT_LEEWAY": "5",
        }
    )
    assert settings.exempt_paths == ("/health", "/docs")
    assert settings.algorithms == ("RS256",)
    assert settings.leeway == 5.0
