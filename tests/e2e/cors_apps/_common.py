"""What the CORS API apps share, from the environment (all required).

- ``CORS_PAGE_ORIGIN``: the origin of the page that calls the API, the one origin allowed;
- ``CORS_PUBLIC_KEY``: the run's RS256 public key (PEM);
- ``AUDIT_LOG``: the JSON-lines file the audit events go to.
"""

from __future__ import annotations

import logging
import os

from jwt_audit_middleware import Settings
from jwt_audit_middleware.sinks import JSONLinesHandler

PAGE_ORIGIN = os.environ["CORS_PAGE_ORIGIN"]


def settings(*, pass_cors_preflight: bool = True) -> Settings:
    """The middleware's settings: a token on every path.

    ``pass_cors_preflight=False`` where a CORS layer outside answers every
    preflight, as the README advises.
    """
    return Settings(
        algorithms=["RS256"],
        public_key=os.environ["CORS_PUBLIC_KEY"],
        pass_cors_preflight=pass_cors_preflight,
    )


def attach_sink() -> None:
    """Audit events as JSON lines to ``AUDIT_LOG`` (flushed at exit, which the test waits for)."""
    logger = logging.getLogger("jwt_audit")
    logger.addHandler(JSONLinesHandler(os.environ["AUDIT_LOG"], flush_interval=0.05))
    logger.setLevel(logging.INFO)
    logger.propagate = False
