"""CORS preflights and the middleware (issue 13): which order works, and what is audited.

A browser sends a preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) without credentials before a cross-origin
call that carries ``Authorization``.  Refused with a 401, the browser never
makes the call.  The documented order puts the CORS layer outside, where it
answers preflights itself and decorates our 401 so the page can read it.
``pass_cors_preflight`` (off by default: a handler that ignores the method
would answer a token-less ``OPTIONS`` as a ``GET``) lets a preflight through to a
CORS layer inside instead; the Flask extension lets only Flask's own automatic
``OPTIONS`` answer run.
"""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jwt_audit_middleware import JWTAuditMiddleware, Settings
from jwt_audit_middleware.testing import CapturedEvents, SigningKey, asgi_request

pytestmark = pytest.mark.anyio

ORIGIN = "http://127.0.0.1:8001"
PREFLIGHT = {
    "origin": ORIGIN,
    "access-control-request-method": "GET",
    "access-control-request-headers": "authorization",
}


async def orders(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/orders", orders, methods=["GET", "POST"])])


def cors(app: object) -> CORSMiddleware:
    return CORSMiddleware(
        app,  # type: ignore[arg-type]
        allow_origins=[ORIGIN],
        allow_methods=["GET", "POST"],
        allow_headers=["authorization"],
    )


def jwt_layer(app: object, key: SigningKey, **options: object) -> JWTAuditMiddleware:
    return JWTAuditMiddleware(app, algorithms=[key.alg], public_key=key.public_pem, **options)


async def test_jwt_outermost_lets_the_preflight_reach_the_cors_layer(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = jwt_layer(cors(starlette_app()), rsa_key, pass_cors_preflight=True)
    response = await asgi_request(app, "/orders", method="OPTIONS", headers=PREFLIGHT)
    assert response.status == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    event = events.only()
    assert (event["event"], event["outcome"], event["reason"], event["detail"]) == (
        "access",
        "allowed",
        None,
        "CORS preflight",
    )
    assert event["subject"] is None


async def test_a_preflight_is_authenticated_by_default(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = jwt_layer(cors(starlette_app()), rsa_key)
    response = await asgi_request(app, "/orders", method="OPTIONS", headers=PREFLIGHT)
    assert response.status == 401
    assert events.only()["reason"] == "missing_token"


async def test_an_options_request_with_credentials_or_without_the_cors_header_is_no_preflight(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = jwt_layer(cors(starlette_app()), rsa_key, pass_cors_preflight=True)
    forged = {**PREFLIGHT, "authorization": f"Bearer {other_rsa_key.token()}"}
    assert (await asgi_request(app, "/orders", method="OPTIONS", headers=forged)).status == 401
    plain = {"origin": ORIGIN}  # OPTIONS, but not asking for a method: not a preflight
    assert (await asgi_request(app, "/orders", method="OPTIONS", headers=plain)).status == 401
    no_origin = {"access-control-request-method": "GET"}  # no browser sends this
    assert (await asgi_request(app, "/orders", method="OPTIONS", headers=no_origin)).status == 401
    assert [e["reason"] for e in events] == ["bad_signature", "missing_token", "missing_token"]


async def test_cors_outermost_makes_our_401_readable_by_the_page(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = cors(jwt_layer(starlette_app(), rsa_key))  # the documented order
    refused = await asgi_request(app, "/orders", headers={"origin": ORIGIN})
    assert refused.status == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN  # the page can read it
    assert json.loads(refused.body)["error"] == "missing_token"
    token = rsa_key.token(sub="ann")
    allowed = await asgi_request(
        app, "/orders", headers={"origin": ORIGIN, "authorization": f"Bearer {token}"}
    )
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    preflight = await asgi_request(app, "/orders", method="OPTIONS", headers=PREFLIGHT)
    assert preflight.status == 200  # answered by the CORS layer: never reaches us
    assert [(e["reason"], e["subject"]) for e in events] == [("missing_token", None), (None, "ann")]


def test_wsgi_passes_a_preflight_too(rsa_key: SigningKey, events: CapturedEvents) -> None:
    from jwt_audit_middleware.wsgi import JWTAuditWSGIMiddleware

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        start_response("204 No Content", [("Access-Control-Allow-Origin", ORIGIN)])  # type: ignore[operator]
        return []

    wrapped = JWTAuditWSGIMiddleware(
        app, algorithms=["RS256"], public_key=rsa_key.public_pem, pass_cors_preflight=True
    )
    statuses: list[str] = []
    environ = {
        "REQUEST_METHOD": "OPTIONS",
        "PATH_INFO": "/orders",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_ORIGIN": ORIGIN,
        "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST",
        "wsgi.input": None,
    }
    body = wrapped(environ, lambda status, headers, exc_info=None: statuses.append(status))
    list(body)
    assert statuses == ["204 No Content"]
    assert events.only()["detail"] == "CORS preflight"


def test_the_flask_extension_lets_only_flasks_own_options_answer_run(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    from flask import Flask

    from jwt_audit_middleware.contrib.flask import JWTAudit

    ran: list[str] = []
    app = Flask(__name__)

    @app.get("/orders")
    def orders() -> dict[str, str]:
        ran.append("orders")
        return {"ok": "yes"}

    @app.route("/raw", methods=["GET", "OPTIONS"])  # handles OPTIONS itself
    def raw() -> dict[str, str]:
        ran.append("raw")
        return {"secret": "data"}

    JWTAudit(
        app,
        settings=Settings(
            algorithms=["RS256"], public_key=rsa_key.public_pem, pass_cors_preflight=True
        ),
    )
    client = app.test_client()
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    automatic = client.options("/orders", headers=headers)
    assert automatic.status_code == 200  # Flask's automatic OPTIONS answer
    refused = client.options("/raw", headers=headers)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"secret" not in refused.data
    assert ran == []  # no view ran without a token
    assert [(e["outcome"], e["reason"], e["detail"]) for e in events] == [
        ("allowed", None, "CORS preflight"),
        ("denied", "missing_token", "a CORS preflight to a view that handles OPTIONS"),
    ]


def test_by_default_a_wsgi_app_never_sees_a_tokenless_options(rsa_key: SigningKey) -> None:
    from jwt_audit_middleware.wsgi import JWTAuditWSGIMiddleware

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        start_response("200 OK", [])  # type: ignore[operator]
        return [b"what a GET would answer"]

    wrapped = JWTAuditWSGIMiddleware(app, algorithms=["RS256"], public_key=rsa_key.public_pem)
    statuses: list[str] = []
    environ = {
        "REQUEST_METHOD": "OPTIONS",
        "PATH_INFO": "/orders",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_ORIGIN": ORIGIN,
        "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "GET",
        "wsgi.input": None,
    }
    body = b"".join(
        wrapped(environ, lambda status, headers, exc_info=None: statuses.append(status))
    )
    assert statuses[0].startswith("401")
    assert b"GET would answer" not in body
