"""FastAPI dependencies over ``JWTAuditMiddleware``.

The middleware (``app.add_middleware(JWTAuditMiddleware, ...)``) verifies,
answers and audits every request; these dependencies only hand a route what it
decided, and show the bearer scheme in the OpenAPI schema::

    from jwt_audit_middleware.contrib.fastapi import Claims, RequireScopes

    @app.get("/orders")
    def orders(claims: Claims): ...

    @app.post("/orders", dependencies=[Security(RequireScopes("orders:write"))])
    def create_order(): ...

A missing scope is answered by the middleware with its 403
``insufficient_scope`` challenge and audited as a denial, the same response
and event as a ``path_scopes`` rule.  Websocket routes take the same
dependencies (a refusal closes the handshake with code 1008).
"""

from typing import Annotated, Any

from fastapi import HTTPException, Security, WebSocketException
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from starlette.requests import HTTPConnection

from jwt_audit_middleware.model import SCOPE_KEY, VerifiedToken
from jwt_audit_middleware.request import deny_request, get_claims

__all__ = [
    "Claims",
    "JWTBearer",
    "OptionalClaims",
    "RequireScopes",
    "jwt_bearer",
    "optional_jwt_bearer",
    "require_scopes",
]

POLICY_VIOLATION = 1008  # websocket close code (RFC 6455 §7.4.1)


def _refuse(
    connection: HTTPConnection,
    status: int,
    reason: str,
    required_scopes: tuple[str, ...] = (),
    detail: str | None = None,
) -> bool:
    """Deny through the middleware, which answers and audits; False in report-only mode.

    The exception only stops the route: the middleware replaces its response
    with the canonical RFC 6750 challenge (realm and all).
    """
    if not deny_request(connection.scope, reason, required_scopes=required_scopes, detail=detail):
        return False
    if connection.scope["type"] == "websocket":
        raise WebSocketException(code=POLICY_VIOLATION, reason=reason)
    raise HTTPException(status, detail=reason)


class JWTBearer(SecurityBase):
    """A security dependency: the verified claims; OpenAPI shows HTTP bearer (JWT).

    It reads what the middleware left on the request and never parses the
    header itself.  Without a token (an optional or exempt path) it answers
    401, or returns ``None`` when ``optional=True``.  Without the middleware
    in front of the app it raises ``RuntimeError``: failing closed and loudly.
    """

    def __init__(
        self,
        *,
        optional: bool = False,
        scheme_name: str | None = None,
        description: str | None = "A JWT access token, verified by jwt_audit_middleware.",
    ) -> None:
        self.model = HTTPBearerModel(bearerFormat="JWT", description=description)
        self.scheme_name = scheme_name or type(self).__name__
        self.optional = optional

    async def __call__(self, connection: HTTPConnection) -> dict[str, Any] | None:
        claims = get_claims(connection)
        if claims is not None or self.optional:
            return claims
        if SCOPE_KEY not in connection.scope:
            raise RuntimeError("JWTAuditMiddleware is not installed in front of this app")
        # an exempt or optional path let the request in without one
        _refuse(connection, 401, "missing_token", detail="the route requires a verified token")
        return None  # report-only: the request goes on, anonymous


jwt_bearer = JWTBearer()
optional_jwt_bearer = JWTBearer(optional=True)

#: The verified claims of the request (401 when there is no token).
Claims = Annotated[dict[str, Any], Security(jwt_bearer)]
#: The verified claims, or ``None`` for an anonymous request on an optional path.
OptionalClaims = Annotated[dict[str, Any] | None, Security(optional_jwt_bearer)]


class RequireScopes:
    """A dependency that requires every one of ``scopes``; returns the claims.

    ``Security(RequireScopes("orders:write"))`` in a route's ``dependencies``
    or as a parameter.  A token that lacks one is denied through the
    middleware (``deny_request``): 403 ``insufficient_scope`` with
    ``scope="..."`` and a ``denial`` event, as for ``path_scopes``.
    """

    def __init__(self, *scopes: str) -> None:
        if not scopes or not all(
            isinstance(scope, str) and scope and scope.isprintable() and " " not in scope
            for scope in scopes
        ):
            raise ValueError("RequireScopes needs one or more scope names without spaces")
        self.scopes = tuple(dict.fromkeys(scopes))

    def __repr__(self) -> str:
        return f"RequireScopes({', '.join(map(repr, self.scopes))})"

    async def __call__(self, connection: HTTPConnection, claims: Claims) -> dict[str, Any]:
        token = connection.scope.get(SCOPE_KEY)
        granted = token.scopes if isinstance(token, VerifiedToken) else frozenset()
        if not granted.issuperset(self.scopes):
            _refuse(connection, 403, "insufficient_scope", self.scopes)
        return claims


def require_scopes(*scopes: str) -> Any:
    """``Security(RequireScopes(*scopes))``: ``dependencies=[require_scopes("admin")]``."""
    return Security(RequireScopes(*scopes))
