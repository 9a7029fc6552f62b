"""Logging handlers that keep the audit trail: a JSON-lines file and a SQL table.

Both write on a background thread, in batches, and flush on ``close()`` and at
process exit; the request thread only queues the event (``JSONLinesHandler``
formats its line first).  ``SQLAuditHandler`` is imported on first use, so the
JSON-lines handler (and the rest of the package) never loads SQLAlchemy.  Both
can be named by dotted path in ``logging.config.dictConfig`` / Django's
``LOGGING``::

    "handlers": {"audit_db": {"class": "jwt_audit_middleware.sinks.SQLAuditHandler",
                              "url": "sqlite:///audit.db"}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .jsonl import JSONLinesHandler

if TYPE_CHECKING:
    from .sql import SQLAuditHandler

__all__ = ["JSONLinesHandler", "SQLAuditHandler"]


def __getattr__(name: str) -> Any:
    if name == "SQLAuditHandler":
        from .sql import SQLAuditHandler  # noqa: PLC0415 - SQLAlchemy only when asked for

        return SQLAuditHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
