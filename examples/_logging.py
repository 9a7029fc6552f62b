"""Where the examples send their audit events: a JSON-lines file or standard output."""

from __future__ import annotations

import logging
import os
import sys

from jwt_audit_middleware import JSONFormatter


def log_events() -> None:
    """Events as JSON lines: to the file ``$AUDIT_LOG`` when set, else to standard output."""
    path = os.environ.get("AUDIT_LOG")
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter())
    logging.getLogger("jwt_audit").addHandler(handler)
