"""What every mount app shares: the run's key options and the audit log file."""

from __future__ import annotations

import logging
import os
from typing import Any

from jwt_audit_middleware import JSONFormatter


def key_options() -> dict[str, Any]:
    """``algorithms``, ``public_key`` and ``audience`` of this run."""
    return {
        "algorithms": ["RS256"],
        "public_key": os.environ["MOUNT_PUBLIC_KEY"],
        "audience": os.environ["MOUNT_AUDIENCE"],
    }


def log_events() -> None:
    """Audit events as JSON lines to ``$AUDIT_LOG``, one write per event."""
    handler = logging.FileHandler(os.environ["AUDIT_LOG"])
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("jwt_audit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
