"""Flask extension: ``JWTAudit(app)`` or ``jwt_audit.init_app(app)``.

Configured the Flask way, from ``app.config``: either ``JWT_AUDIT_*`` keys
(``JWT_AUDIT_ALGORITHMS``, ``JWT_AUDIT_PUBLIC_KEY``, ... as
``app.config.from_prefixed_env()`` loads them) or one ``JWT_AUDIT`` dict.  The
extension wraps ``app.wsgi_app`` in ``JWTAuditWSGIMiddleware``, so Flask
requests go through exactly the WSGI code path; views read the verified claims
from ``current_claims``::

    from jwt_audit_middleware.contrib.flask import JWTAudit, current_claims

    app = Flask(__name__)
    app.config.from_prefixed_env()     # FLASK_JWT_AUDIT_ALGORITHMS=... or set app.config[...]
    JWTAudit(app)

    @app.get("/orders")
    def orders():
        return {"owner": current_claims["sub"]}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, request
from flask.typing import ResponseReturnValue
from werkzeug.local import LocalProxy

from jwt_audit_middleware.errors import ConfigurationError
from jwt_audit_middleware.model import PREFLIGHT_KEY
from jwt_audit_middleware.request import deny_request, get_claims
from jwt_audit_middleware.settings import Settings
from jwt_audit_middleware.wsgi import JWTAuditWSGIMiddleware

__all__ = ["JWTAudit", "current_claims"]

CONFIG_KEY = "JWT_AUDIT"
CONFIG_PREFIX = "JWT_AUDIT_"
EXTENSION_KEY = "jwt_audit"


def _current_claims() -> Mapping[str, Any]:
    return get_claims(request) or {}


#: The verified claims of the current request: an empty (falsy) mapping on an
#: exempt path or for an anonymous request on an optional path.
current_claims: Mapping[str, Any] = LocalProxy(_current_claims)  # type: ignore[assignment]


def settings_from_config(config: Mapping[str, Any]) -> Settings:
    """``Settings`` from ``JWT_AUDIT_*`` keys and/or a ``JWT_AUDIT`` dict of a Flask config."""
    options: dict[str, Any] = {}
    whole = config.get(CONFIG_KEY)
    if whole is not None:
        if not isinstance(whole, Mapping):
            raise ConfigurationError(CONFIG_KEY, "expected a dict of options")
        options.update({str(key).lower(): value for key, value in whole.items()})
    for key, value in config.items():
        if isinstance(key, str) and key.startswith(CONFIG_PREFIX):
            name = key[len(CONFIG_PREFIX) :].lower()
            if name in options:
                raise ConfigurationError(key, f"{name!r} is also given in {CONFIG_KEY}")
            # from_prefixed_env keeps non-JSON text as it is: read it as from_env does
            options[name] = (
                Settings.option_from_text(name, value, source=key)
                if isinstance(value, str)
                else value
            )
    if not options:
        raise ConfigurationError(
            CONFIG_KEY, "no configuration: set JWT_AUDIT_ALGORITHMS (and a key) in app.config"
        )
    return Settings.from_mapping(options)


def _only_flask_answers_preflights() -> ResponseReturnValue | None:
    """A preflight let through unauthenticated reaches no view of the app.

    Flask answers ``OPTIONS`` itself for a route that does not name it
    (``provide_automatic_options``), with flask-cors's headers; a route that
    handles ``OPTIONS`` would run its view without a token, so that request is
    denied as the token-less request it is (401 ``missing_token``).
    """
    if not request.environ.get(PREFLIGHT_KEY):
        return None
    rule = request.url_rule
    if rule is None or getattr(rule, "provide_automatic_options", False):
        return None  # Flask's own answer (or its 404/405): no view runs
    deny_request(request, "missing_token", detail="a CORS preflight to a view that handles OPTIONS")
    return ("", 401)  # replaced by the middleware's challenge


class JWTAudit:
    """The Flask extension.

    ``JWTAudit(app)`` or, for app factories, ``jwt_audit = JWTAudit()`` then
    ``jwt_audit.init_app(app)``.  ``settings=`` takes a ready ``Settings``
    instead of reading ``app.config``.  A bad configuration raises
    ``ConfigurationError`` from ``init_app``, i.e. when the app is built.
    """

    def __init__(self, app: Flask | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app``; the extension is then ``app.extensions["jwt_audit"]``."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("JWTAudit is already initialised on this app")
        settings = self.settings or settings_from_config(app.config)
        middleware = JWTAuditWSGIMiddleware(app.wsgi_app, settings=settings)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = middleware
        if settings.pass_cors_preflight:
            # first of the app's before_request hooks: nothing of the app runs before it
            app.before_request_funcs.setdefault(None, []).insert(0, _only_flask_answers_preflights)
