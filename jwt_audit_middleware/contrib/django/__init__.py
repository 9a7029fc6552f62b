"""Django integration.

``settings.py``::

    INSTALLED_APPS = [..., "jwt_audit_middleware.contrib.django"]   # system checks
    MIDDLEWARE = ["jwt_audit_middleware.contrib.django.JWTAuditMiddleware", ...]
    JWT_AUDIT = {"ALGORITHMS": ["RS256"], "PUBLIC_KEY": ..., "AUDIENCE": "api"}

Views find the verified claims on ``request.jwt_claims`` (the token itself on
``request.jwt_audit``); ``manage.py check`` reports a bad ``JWT_AUDIT`` as
``jwt_audit.E001`` ... ``E004``.
"""

from .middleware import JWTAuditMiddleware

__all__ = ["JWTAuditMiddleware"]
