"""Flask with flask-cors and the ``JWTAudit`` extension, served by gunicorn.

- ``app``: flask-cors and the extension alone.  The extension wraps
  ``app.wsgi_app``, so its 401 is answered before Flask runs and flask-cors's
  ``after_request`` never sees it: no CORS headers, the page cannot read it.
  Preflights pass through (``pass_cors_preflight``) to flask-cors, so calls
  with a token work.
- ``with_cors_on_denials``: the same, plus the README's ``cors_on_denials``
  outside the extension, which gives a denial the CORS headers flask-cors
  would have given it: the page reads the 401.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from flask_cors import CORS

from jwt_audit_middleware.contrib.flask import JWTAudit, current_claims

from ._common import PAGE_ORIGIN, attach_sink, settings

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def cors_on_denials(wsgi_app: WSGIApp, origins: set[str]) -> WSGIApp:
    """Outside JWTAudit: the CORS header flask-cors never gets to put on a denial."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        origin = environ.get("HTTP_ORIGIN")

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if origin in origins and not any(
                name.lower() == "access-control-allow-origin" for name, _ in headers
            ):
                headers = [*headers, ("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
            return start_response(status, headers, exc_info)

        return wsgi_app(environ, start)

    return app


def orders_app() -> Flask:
    api = Flask(__name__)
    CORS(api, origins=[PAGE_ORIGIN])
    JWTAudit(api, settings=settings())

    @api.get("/orders")
    def orders() -> dict[str, Any]:
        return {"owner": current_claims.get("sub"), "orders": [1, 2]}

    return api


attach_sink()

app = orders_app()

with_cors_on_denials = orders_app()
with_cors_on_denials.wsgi_app = cors_on_denials(  # type: ignore[assignment]
    with_cors_on_denials.wsgi_app, {PAGE_ORIGIN}
)
