"""Exceptions of jwt_audit_middleware.

``ConfigurationError`` is public: it is what a bad configuration raises at
construction.  ``Denied`` is internal control flow of the verifier; it never
leaves the middleware.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


class ConfigurationError(ValueError):
    """An option is unknown, missing or invalid.

    Raised at construction, never per request.  The message names the option
    (and, for a typo, the closest valid name) and never contains a secret.
    """

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"{option}: {message}")


class Denied(Exception):  # noqa: N818 - a verdict, not an error
    """A request is denied for ``reason`` (a code of ``events.REASONS``).

    ``detail`` is a short, fixed, safe message: it never contains client input,
    token text or library error text.  Identity fields travel in ``claims``
    only when the token's signature has verified.
    """

    __slots__ = ("alg", "claims", "detail", "kid", "reason", "required_scopes")

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        alg: str | None = None,
        kid: str | None = None,
        claims: Mapping[str, Any] | None = None,
        required_scopes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.alg = alg
        self.kid = kid
        self.claims = claims
        self.required_scopes = required_scopes
