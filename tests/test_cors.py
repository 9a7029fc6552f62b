"""CORS preflights and the middleware (issue 13): which order works, and what is audited.

A browser sends a preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) without credentials before a cross-origin
call that carries ``Authorization``.  Refused with a 401, the browser never
makes the call.  ``pass_cors_preflight`` (on by default) lets a preflight
through to a CORS layer inside; the documented order puts the CORS layer
outside, where it also decorates our 401 so the page can read it.
"""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jwt_audit_middleware import JWTAuditMiddleware
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
    app = jwt_layer(cors(starlette_app()), rsa_key)
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


async def test_a_preflight_is_authenticated_when_the_option_is_off(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = jwt_layer(cors(starlette_app()), rsa_key, pass_cors_preflight=False)
    response = await asgi_request(app, "/orders", method="OPTIONS", headers=PREFLIGHT)
    assert response.status == 401
    assert events.only()["reason"] == "missing_token"


async def test_an_options_request_with_credentials_or_without_the_cors_header_is_no_preflight(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    app = jwt_layer(cors(starlette_app()), rsa_key)
    forged = {**PREFLIGHT, "authorization": f"Bearer {other_rsa_key.token()}"}
    assert (await asgi_request(app, "/orders", method="OPTIONS", headers=forged)).status == 401
    plain = {"origin": ORIGIN}  # OPTIONS, but not asking for a method: not a preflight
    assert (await asgi_request(app, "/orders", method="OPTIONS", headers=plain)).status == 401
    assert [e["reason"] for e in events] == ["bad_signature", "missing_token"]


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

    wrapped = JWTAuditWSGIMiddleware(app, algorithms=["RS256"], public_key=rsa_key.public_pem)
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
