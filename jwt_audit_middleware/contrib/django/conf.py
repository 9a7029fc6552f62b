"""Reading ``settings.JWT_AUDIT`` into a validated ``Settings``."""

from __future__ import annotations

from django.conf import settings as django_settings

from jwt_audit_middleware.errors import ConfigurationError
from jwt_audit_middleware.settings import Settings

SETTING = "JWT_AUDIT"
MIDDLEWARE = "jwt_audit_middleware.contrib.django.JWTAuditMiddleware"


def read_settings() -> Settings:
    """``settings.JWT_AUDIT`` as ``Settings``; ``ConfigurationError`` when absent or invalid."""
    options = getattr(django_settings, SETTING, None)
    if options is None:
        raise ConfigurationError(
            SETTING, "is not set; give the options as a dict, e.g. {'ALGORITHMS': ['RS256'], ...}"
        )
    return Settings.from_mapping(options)
