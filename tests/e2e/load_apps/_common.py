"""What the load apps share: the middleware's settings and the audit sink, from the environment.

- ``LOAD_PUBLIC_KEY`` (the run's RS256 public key) or ``LOAD_JWKS_URL`` (a JWKS
  server of the test on 127.0.0.1, with ``LOAD_JWKS_CACHE_SECONDS``);
  ``LOAD_AUDIENCE``.
- ``LOAD_SINK=jsonl``: ``JSONLinesHandler(AUDIT_LOG)``.
- ``LOAD_SINK=sql``: ``SQLAuditHandler(LOAD_SQL_URL, table=LOAD_SQL_TABLE,
  spill_path=LOAD_SPILL_PATH)``, with a small queue (``LOAD_SQL_QUEUE``) so an
  outage spills during the run, a ``close_timeout`` shorter than the server's
  graceful timeout (``LOAD_SQL_CLOSE_TIMEOUT``) and the longest pause between
  two attempts at a batch (``LOAD_SQL_MAX_RETRY_DELAY``).

The handler is closed at process exit (the sinks register that themselves):
the test stops the server with SIGTERM and then reads what was written.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from jwt_audit_middleware import Settings

#: Needs the ``admin`` scope: tokens without it are answered 403.
ADMIN_PATH = "/admin"
HEALTH_PATH = "/health"


def settings() -> Settings:
    """The middleware's settings for this run."""
    options: dict[str, Any] = {
        "algorithms": ["RS256"],
        "audience": os.environ["LOAD_AUDIENCE"],
        "exempt_paths": [HEALTH_PATH],
        "path_scopes": {ADMIN_PATH: ["admin"]},
        # small, so the run's few hundred distinct tokens keep evicting each other
        "cache_size": int(os.environ.get("LOAD_CACHE_SIZE", "128")),
        # below the servers' own header limits (gunicorn: 8190 bytes a header
        # line), so an oversized token reaches the middleware
        "max_token_bytes": 4096,
    }
    url = os.environ.get("LOAD_JWKS_URL")
    if url:
        options["jwks_url"] = url
        options["jwks_timeout"] = float(os.environ.get("LOAD_JWKS_TIMEOUT", "0.5"))
        options["jwks_cache_seconds"] = float(os.environ.get("LOAD_JWKS_CACHE_SECONDS", "2"))
        options["jwks_min_refresh_seconds"] = float(os.environ.get("LOAD_JWKS_MIN_REFRESH", "1"))
    else:
        options["public_key"] = os.environ["LOAD_PUBLIC_KEY"]
    return Settings(**options)


def attach_sink() -> logging.Handler:
    """The audit sink this run asked for, on the ``jwt_audit`` logger."""
    sink = os.environ.get("LOAD_SINK", "jsonl")
    handler: logging.Handler
    if sink == "jsonl":
        from jwt_audit_middleware.sinks import JSONLinesHandler

        handler = JSONLinesHandler(os.environ["AUDIT_LOG"])
    elif sink == "sql":
        from jwt_audit_middleware.sinks import SQLAuditHandler

        handler = SQLAuditHandler(
            os.environ["LOAD_SQL_URL"],
            table=os.environ["LOAD_SQL_TABLE"],
            spill_path=os.environ["LOAD_SPILL_PATH"],
            queue_size=int(os.environ.get("LOAD_SQL_QUEUE", "1000")),
            batch_size=200,
            flush_interval=0.1,
            block_timeout=0.05,
            close_timeout=float(os.environ.get("LOAD_SQL_CLOSE_TIMEOUT", "1")),
            max_retry_delay=float(os.environ.get("LOAD_SQL_MAX_RETRY_DELAY", "5")),
        )
    else:
        raise ValueError(f"LOAD_SINK={sink!r}")
    # the sink's own warnings (write failed, spilling, close) with time and worker
    problems = logging.StreamHandler()
    problems.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(name)s: %(message)s"))
    logging.getLogger("jwt_audit_middleware.sinks").addHandler(problems)
    logger = logging.getLogger("jwt_audit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler
