"""Django REST framework: authentication and scope permission over the Django middleware.

The middleware (``jwt_audit_middleware.contrib.django.JWTAuditMiddleware`` in
``MIDDLEWARE``) has already verified the token, answered and audited every
request when a DRF view runs; these classes only hand DRF what it decided::

    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            "jwt_audit_middleware.contrib.drf.JWTAuditAuthentication",
        ],
        "DEFAULT_PERMISSION_CLASSES": ["jwt_audit_middleware.contrib.drf.HasScope"],
    }

    class OrderList(APIView):
        required_scopes = ["orders:read"]

- ``JWTAuditAuthentication`` never parses the header or verifies anything a
  second time: it reads ``request.jwt_audit`` (the ``VerifiedToken`` the
  middleware left) and returns ``(TokenUser, VerifiedToken)``, so
  ``request.user.identity`` and ``request.auth.scopes`` work.  Its
  ``authenticate_header`` is the bearer challenge, so DRF answers a request
  without credentials 401, not 403.
- ``HasScope`` requires a verified token and every scope of the view's
  ``required_scopes`` (and of ``HasScope.require(...)``).  A refusal goes
  through the middleware (``deny_request``): the same 401 ``missing_token`` or
  403 ``insufficient_scope`` challenge and ``denial`` event as a
  ``path_scopes`` rule.  In report-only mode the view runs and the event says
  ``would_deny``.

Bearer-token requests need no CSRF token: DRF exempts ``APIView`` from
Django's CSRF middleware and only ``SessionAuthentication`` enforces CSRF.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from rest_framework.authentication import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
    BaseAuthentication,
)
from rest_framework.permissions import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
    BasePermission,
)

from jwt_audit_middleware.model import VerifiedToken
from jwt_audit_middleware.request import deny_request
from jwt_audit_middleware.settings import Settings

from .django.conf import SETTING

__all__ = ["HasScope", "JWTAuditAuthentication", "TokenUser"]

Request = Any  # rest_framework.request.Request
View = Any  # rest_framework.views.APIView


class TokenUser:
    """The ``request.user`` of a verified token: no database, no Django user model.

    ``identity`` is what the middleware made of the claims (``sub`` by
    default; see the ``identity`` option), also ``username``, ``pk`` and
    ``str(user)`` (so DRF's ``UserRateThrottle`` counts per identity).  It has
    no Django permissions: ``has_perm`` is false, ``is_staff`` and
    ``is_superuser`` are false.  Subclass ``JWTAuditAuthentication`` and
    override ``get_user`` to map the token to a Django user instead.
    """

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, token: VerifiedToken) -> None:
        self.token = token
        self.identity = token.identity or ""
        self.username = self.identity
        self.pk = self.id = self.identity or None

    @property
    def claims(self) -> dict[str, Any]:
        """The verified claims (read-only)."""
        return self.token.claims

    @property
    def scopes(self) -> frozenset[str]:
        """The token's scopes."""
        return self.token.scopes

    def get_username(self) -> str:
        """Django's name for the user's name: the identity."""
        return self.identity

    def has_perm(self, perm: str, obj: object = None) -> bool:
        """Django model permissions do not apply to a token: use scopes (``HasScope``)."""
        return False

    def has_perms(self, perm_list: Iterable[str], obj: object = None) -> bool:
        """See ``has_perm``."""
        return False

    def has_module_perms(self, app_label: str) -> bool:
        """See ``has_perm``."""
        return False

    def __str__(self) -> str:
        return self.identity

    def __repr__(self) -> str:
        return f"TokenUser({self.identity!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenUser) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token.fingerprint)


def _django_request(request: Request) -> Any:
    return getattr(request, "_request", request)


def _verified(request: Request) -> VerifiedToken | None:
    """The token the middleware verified; fails loudly when no middleware ran."""
    django_request = _django_request(request)
    if not hasattr(django_request, "jwt_audit"):
        raise ImproperlyConfigured(
            "jwt_audit_middleware.contrib.django.JWTAuditMiddleware is not in MIDDLEWARE: "
            "nothing verified this request's token"
        )
    token = django_request.jwt_audit
    return token if isinstance(token, VerifiedToken) else None


def _realm() -> str:
    options = getattr(django_settings, SETTING, None)
    if isinstance(options, Mapping):
        for key, value in options.items():
            if isinstance(key, str) and key.lower() == "realm" and isinstance(value, str):
                return value
    return str(Settings.__dataclass_fields__["realm"].default)


class JWTAuditAuthentication(BaseAuthentication):  # type: ignore[misc]  # DRF ships no types
    """DRF authentication from the token the middleware verified (never verified twice).

    Returns ``(self.get_user(token), token)``: ``request.user`` is a
    ``TokenUser`` unless ``get_user`` is overridden, ``request.auth`` the
    ``VerifiedToken`` (``.claims``, ``.scopes``, ``.identity``).  A request
    without a verified token (an exempt or optional path, or report-only mode
    for a refused token) is not authenticated here: ``None``, and DRF tries
    the next class or makes it anonymous.
    """

    def authenticate(self, request: Request) -> tuple[Any, VerifiedToken] | None:
        """``(user, token)`` for a verified token, else ``None``."""
        token = _verified(request)
        if token is None:
            return None
        return self.get_user(token), token

    def get_user(self, token: VerifiedToken) -> Any:
        """The ``request.user`` of ``token``: override to return a Django user."""
        return TokenUser(token)

    def authenticate_header(self, request: Request) -> str:
        """The RFC 6750 challenge: DRF then answers 401 (not 403) without credentials."""
        return f'Bearer realm="{_realm()}"'


class HasScope(BasePermission):  # type: ignore[misc]  # DRF ships no types
    """A verified token with every scope of ``view.required_scopes`` and ``scopes``.

    ``permission_classes = [HasScope]`` with ``required_scopes = [...]`` on an
    ``APIView`` or viewset, or ``HasScope.require("orders:write")`` for an
    ``@api_view`` function.  With no scopes asked it only requires a token.
    Refusals are answered and audited by the middleware (401 ``missing_token``,
    403 ``insufficient_scope`` with ``scope="..."``).
    """

    scopes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def require(cls, *scopes: str) -> type[HasScope]:
        """A ``HasScope`` that also requires ``scopes``: ``HasScope.require("admin")``."""
        _check_scopes(scopes)
        merged = tuple(dict.fromkeys((*cls.scopes, *scopes)))
        return type(
            cls.__name__, (cls,), {"scopes": merged, "__qualname__": f"{cls.__qualname__}{merged}"}
        )

    def required(self, view: View) -> tuple[str, ...]:
        """The scopes a request to ``view`` needs."""
        asked = getattr(view, "required_scopes", None) or ()
        if isinstance(asked, str):
            asked = asked.split()
        return tuple(dict.fromkeys((*self.scopes, *asked)))

    def has_permission(self, request: Request, view: View) -> bool:
        """True with a token holding every required scope; else denied through the middleware."""
        token = _verified(request)
        django_request = _django_request(request)
        if token is None:
            # an exempt or optional path let the request in without a token
            return not deny_request(
                django_request, "missing_token", detail="the view requires a verified token"
            )
        required = self.required(view)
        if token.scopes.issuperset(required):
            return True
        return not deny_request(django_request, "insufficient_scope", required_scopes=required)


def _check_scopes(scopes: tuple[str, ...]) -> None:
    if not scopes or not all(
        isinstance(scope, str) and scope and scope.isprintable() and " " not in scope
        for scope in scopes
    ):
        raise ValueError("HasScope.require needs one or more scope names without spaces")
