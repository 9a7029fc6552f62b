"""The app config: add ``"jwt_audit_middleware.contrib.django"`` to ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig
from django.core.checks import Tags, register

from . import checks


class JWTAuditConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """Registers the ``jwt_audit`` system checks."""

    name = "jwt_audit_middleware.contrib.django"
    label = "jwt_audit"
    verbose_name = "JWT audit"

    def ready(self) -> None:
        register(checks.check_settings, Tags.security)
        register(checks.check_middleware, Tags.security)
