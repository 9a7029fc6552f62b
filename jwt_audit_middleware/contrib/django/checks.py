"""Django system checks: ``manage.py check`` reports a bad ``JWT_AUDIT``.

=====================  ==================================================
``jwt_audit.E001``     ``JWT_AUDIT`` is not set
``jwt_audit.E002``     ``JWT_AUDIT`` is not a dict
``jwt_audit.E003``     an unknown option (a typo: the hint names the closest)
``jwt_audit.E004``     an invalid or missing option value
``jwt_audit.W001``     the app is installed but the middleware is not in ``MIDDLEWARE``
``jwt_audit.W002``     several ``PROVIDERS`` share the plain ``{sub}`` identity
=====================  ==================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Warning

from jwt_audit_middleware.errors import ConfigurationError
from jwt_audit_middleware.settings import Settings

from .conf import MIDDLEWARE, SETTING, read_settings

_OPTIONS_HINT = "JWT_AUDIT keys are the options of jwt_audit_middleware.Settings: " + ", ".join(
    name.upper() for name in Settings.option_names()
)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Validate ``settings.JWT_AUDIT`` exactly as the middleware will at start-up."""
    options = getattr(django_settings, SETTING, None)
    if options is None:
        return [
            Error(
                f"{SETTING} is not set.",
                hint="Add JWT_AUDIT = {'ALGORITHMS': [...], <key option>: ...} to settings.",
                id="jwt_audit.E001",
            )
        ]
    if not isinstance(options, Mapping):
        return [
            Error(
                f"{SETTING} must be a dict of options, not {type(options).__name__}.",
                hint=_OPTIONS_HINT,
                id="jwt_audit.E002",
            )
        ]
    try:
        configured = read_settings()
    except ConfigurationError as exc:
        unknown = exc.option.lower() not in Settings.option_names()
        return [
            Error(
                f"{SETTING}: {exc}",
                hint=_OPTIONS_HINT if unknown else None,
                id="jwt_audit.E003" if unknown else "jwt_audit.E004",
            )
        ]
    return _shared_identities(configured)


def _shared_identities(configured: Settings) -> list[CheckMessage]:
    """OIDC ``sub`` is unique per issuer only: two providers' ``admin`` are one user."""
    plain = [
        provider.issuer
        for provider in configured.trusted_providers
        if (configured.identity if provider.identity is None else provider.identity) == "{sub}"
    ]
    if len(plain) < 2:
        return []
    return [
        Warning(
            f"{SETTING}: providers {', '.join(plain)} all map the plain sub claim to "
            "REMOTE_USER: a partner's sub=admin becomes the same Django user as yours.",
            hint="Set IDENTITY = '{iss}|{sub}', or an identity per provider "
            "(e.g. 'partner:{sub}').",
            id="jwt_audit.W002",
        )
    ]


def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when the app is installed but no request goes through the middleware."""
    if MIDDLEWARE in (getattr(django_settings, "MIDDLEWARE", None) or ()):
        return []
    return [
        Warning(
            f"{MIDDLEWARE} is not in MIDDLEWARE: no request is verified or audited.",
            hint=f"Add {MIDDLEWARE!r} near the top of MIDDLEWARE.",
            id="jwt_audit.W001",
        )
    ]
