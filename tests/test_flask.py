"""``JWTAuditWSGIMiddleware`` around a real Flask app, driven by Flask's test client."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import flask
import jwt
import pytest
from conftest import assert_no_secret

from jwt_audit_middleware import REASONS, JWTAuditWSGIMiddleware, VerifiedToken, get_claims
from jwt_audit_middleware.testing import CapturedEvents, SigningKey

ISSUER = "https://idp.example"
AUDIENCE = "api"
TIME_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def make_app(key: SigningKey, **extra: Any) -> flask.Flask:
    app = flask.Flask("jwt_audit_flask_test")
    streamed: list[str] = []
    app.config["streamed"] = streamed

    @app.get("/me")
    def me() -> dict[str, Any]:
        token = flask.request.environ.get("jwt_audit")
        return {
            "claims": get_claims(flask.request),
            "remote_user": flask.request.environ.get("REMOTE_USER"),
            "verified": isinstance(token, VerifiedToken),
        }

    @app.get("/admin/report")
    def report() -> dict[str, Any]:
        return {"report": "ok", "claims": get_claims(flask.request)}

    @app.get("/health")
    def health() -> str:
        return "up"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("the view failed")

    @app.get("/stream")
    def stream() -> flask.Response:
        def generate() -> Iterator[str]:
            for part in ("one", "two", "three"):
                streamed.append(part)
                yield part

        return flask.Response(generate(), mimetype="text/plain")

    options = key.options(issuer=ISSUER, audience=AUDIENCE, **extra)
    app.wsgi_app = JWTAuditWSGIMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def good_token(key: SigningKey, **claims: Any) -> str:
    return key.token({"iss": ISSUER, "aud": AUDIENCE, **claims})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_challenge(
    response: Any, events: CapturedEvents, reason: str, path: str, scope: str | None = None
) -> dict[str, Any]:
    spec = REASONS[reason]
    assert response.status_code == spec.status
    if spec.error is None:
        expected = 'Bearer realm="api"'
    else:
        expected = (
            f'Bearer realm="api", error="{spec.error}", error_description="{spec.description}"'
        )
    if scope is not None:
        expected += f', scope="{scope}"'
    assert response.headers["WWW-Authenticate"] == expected
    assert response.mimetype == "application/json"
    assert response.get_json() == {
        "error": spec.error or reason,
        "error_description": spec.description,
    }
    event = events.only()
    assert event["event"] == "denial"
    assert event["outcome"] == "denied"
    assert event["reason"] == reason
    assert event["status"] == spec.status
    assert event["method"] == "GET"
    assert event["path"] == path
    assert event["protocol"] == "http"
    assert event["client_ip"] == "127.0.0.1"
    assert TIME_FORMAT.fullmatch(event["time"])
    return event


def leak_check(response: Any, events: CapturedEvents, token: str, key: SigningKey) -> None:
    secrets = (key.secret,) if key.alg.startswith("HS") else ()
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
    for text in (response.get_data(), headers, events.text()):
        assert_no_secret(text, token, *secrets)


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256", "EdDSA"])
def test_valid_token_reaches_the_view(
    alg: str, keys: dict[str, SigningKey], events: CapturedEvents
) -> None:
    key = keys[alg]
    client = make_app(key).test_client()
    token = good_token(key, sub=f"flask-{alg}", scope="read")

    response = client.get("/me?page=3", headers=bearer(token))

    assert response.status_code == 200
    claims = jwt.decode(token, options={"verify_signature": False})
    assert response.get_json() == {
        "claims": claims,
        "remote_user": f"flask-{alg}",
        "verified": True,
    }
    event = events.only()
    assert event["event"] == "access"
    assert event["outcome"] == "allowed"
    assert event["reason"] is None
    assert event["status"] == 200
    assert event["path"] == "/me"
    assert event["subject"] == f"flask-{alg}"
    assert event["issuer"] == ISSUER
    assert event["token_id"] == claims["jti"]
    assert event["alg"] == alg
    assert event["scopes"] == ["read"]
    leak_check(response, events, token, key)


def test_missing_token(rsa_key: SigningKey, events: CapturedEvents) -> None:
    response = make_app(rsa_key).test_client().get("/me")
    event = assert_challenge(response, events, "missing_token", "/me")
    assert event["subject"] is None
    assert event["token_fingerprint"] is None


def test_expired_token(rsa_key: SigningKey, events: CapturedEvents) -> None:
    token = good_token(rsa_key, exp=int(time.time()) - 120)
    response = make_app(rsa_key).test_client().get("/me", headers=bearer(token))
    event = assert_challenge(response, events, "expired", "/me")
    assert event["subject"] == "alice"  # the signature verified; only the time is wrong
    leak_check(response, events, token, rsa_key)


def test_forged_token(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    forged = good_token(other_rsa_key, sub="mallory")
    response = make_app(rsa_key).test_client().get("/me", headers=bearer(forged))
    event = assert_challenge(response, events, "bad_signature", "/me")
    assert event["subject"] is None
    assert event["issuer"] is None
    assert event["token_id"] is None
    assert event["kid"] == "rs256-1"
    leak_check(response, events, forged, rsa_key)


def test_insufficient_scope(rsa_key: SigningKey, events: CapturedEvents) -> None:
    app = make_app(rsa_key, path_scopes={"/admin": ["reports:read"]})
    client = app.test_client()
    token = good_token(rsa_key, scope="profile")

    response = client.get("/admin/report", headers=bearer(token))
    event = assert_challenge(
        response, events, "insufficient_scope", "/admin/report", scope="reports:read"
    )
    assert event["subject"] == "alice"
    assert event["scopes"] == ["profile"]
    leak_check(response, events, token, rsa_key)

    events.clear()
    allowed = good_token(rsa_key, scope="profile reports:read")
    response = client.get("/admin/report", headers=bearer(allowed))
    assert response.status_code == 200
    assert response.get_json()["report"] == "ok"
    assert events.only()["status"] == 200


def test_exempt_path(rsa_key: SigningKey, events: CapturedEvents) -> None:
    client = make_app(rsa_key, exempt_paths=["/health"]).test_client()
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_data() == b"up"
    event = events.only()
    assert (event["event"], event["outcome"], event["status"]) == ("access", "allowed", 200)


def test_unknown_route_is_still_audited_with_its_status(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    token = good_token(rsa_key)
    response = make_app(rsa_key).test_client().get("/nope", headers=bearer(token))
    assert response.status_code == 404
    assert events == []  # the body is not read yet
    assert b"Not Found" in response.get_data()
    event = events.only()
    assert (event["event"], event["status"], event["subject"]) == ("access", 404, "alice")


def test_view_that_raises_is_one_access_event_with_500(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = make_app(rsa_key)
    token = good_token(rsa_key)

    response = app.test_client().get("/boom", headers=bearer(token))

    assert response.status_code == 500
    response.get_data()
    assert len(events) == 1
    event = events.only()
    assert event["event"] == "access"
    assert event["outcome"] == "allowed"
    assert event["status"] == 500
    assert event["path"] == "/boom"
    assert event["subject"] == "alice"
    leak_check(response, events, token, rsa_key)


def test_view_exception_propagated_in_testing_mode(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = make_app(rsa_key)
    app.testing = True  # PROPAGATE_EXCEPTIONS: the error leaves Flask and the middleware
    client = app.test_client()
    with pytest.raises(RuntimeError, match="the view failed"):
        client.get("/boom", headers=bearer(good_token(rsa_key)))
    event = events.only()
    assert (event["event"], event["status"], event["subject"]) == ("access", 500, "alice")


def test_streaming_response_event_once_sent(rsa_key: SigningKey, events: CapturedEvents) -> None:
    app = make_app(rsa_key)
    token = good_token(rsa_key, sub="streamer")

    response = app.test_client().get("/stream", headers=bearer(token))
    assert response.status_code == 200
    assert events == []  # the body has not been sent yet

    assert response.get_data() == b"onetwothree"
    assert app.config["streamed"] == ["one", "two", "three"]
    assert len(events) == 1  # sent in full: the event is out, before the server's close()

    response.close()
    event = events.only()
    assert event["event"] == "access"
    assert event["status"] == 200
    assert event["subject"] == "streamer"
    assert event["path"] == "/stream"


def test_report_only(rsa_key: SigningKey, events: CapturedEvents) -> None:
    client = make_app(rsa_key, mode="report-only").test_client()
    token = good_token(rsa_key, exp=int(time.time()) - 5)

    response = client.get("/me", headers=bearer(token))

    assert response.status_code == 200
    assert "WWW-Authenticate" not in response.headers
    assert response.get_json() == {"claims": None, "remote_user": None, "verified": False}
    event = events.only()
    assert event["event"] == "denial"
    assert event["outcome"] == "would_deny"
    assert event["reason"] == "expired"
    assert event["status"] == 401
    assert event["subject"] == "alice"
    leak_check(response, events, token, rsa_key)

    events.clear()
    response = client.get("/me")
    assert response.status_code == 200
    event = events.only()
    assert (event["outcome"], event["reason"], event["status"]) == (
        "would_deny",
        "missing_token",
        401,
    )

    events.clear()
    fresh = good_token(rsa_key, sub="erin")
    response = client.get("/me", headers=bearer(fresh))
    assert response.get_json()["remote_user"] == "erin"
    event = events.only()
    assert (event["event"], event["outcome"], event["status"]) == ("access", "allowed", 200)
