"""jwt_audit_middleware: verify JWT bearer tokens and audit every request.

ASGI and WSGI middleware that verify the ``Authorization: Bearer`` token with
PyJWT, attach the verified claims to the request, answer failures with RFC 6750
challenges and emit one structured ``access`` or ``denial`` event per request
on the logger ``jwt_audit``.
"""

from .asgi import JWTAuditMiddleware, JWTUser
from .audit import AuditLogger, JSONFormatter
from .errors import ConfigurationError
from .events import REASONS, SCHEMA
from .issuer import TokenIssuer
from .model import VerifiedToken
from .request import get_claims
from .settings import Settings
from .wsgi import JWTAuditWSGIMiddleware

__all__ = [
    "REASONS",
    "SCHEMA",
    "AuditLogger",
    "ConfigurationError",
    "JSONFormatter",
    "JWTAuditMiddleware",
    "JWTAuditWSGIMiddleware",
    "JWTUser",
    "Settings",
    "TokenIssuer",
    "VerifiedToken",
    "get_claims",
]
