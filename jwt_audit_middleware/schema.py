"""The SQL audit table: its name, columns, indexes and schema-version table.

``SQLAuditHandler`` (``sinks.sql``) writes this table and ``jwt-audit report``
(``report``) reads it; both take its layout from here.  It sits below both, so
the report needs nothing from the sinks to know the table.  It imports
SQLAlchemy: import it only where SQL is wanted.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

#: Version of the table layout; stored in ``<table>_schema``.  Version 2 added
#: the nullable chain columns (``CHAIN_COLUMNS``); ``SQLAuditHandler`` adds them
#: to a version-1 table when it opens it.
SCHEMA_VERSION = 2
DEFAULT_TABLE = "jwt_audit_events"

#: (column, length) of the typed string columns, filled from the event's fields
#: of the same names.
STRING_COLUMNS = (
    ("schema", 32),
    ("event", 32),
    ("outcome", 16),
    ("reason", 64),
    ("request_id", 160),
    ("method", 16),
    ("path", 1100),
    ("protocol", 16),
    ("client_ip", 64),
    ("user_agent", 300),
    ("subject", 300),
    ("issuer", 300),
    ("token_id", 300),
    ("alg", 40),
    ("kid", 80),
    ("token_fingerprint", 40),
)

#: The string columns that may not be NULL.
REQUIRED_STRINGS = ("event", "outcome")

#: The hash chain of a tamper-evident table (``chain=True``); NULL in rows of
#: handlers that do not chain.  See ``jwt_audit_middleware.chain``.
CHAIN_COLUMNS = ("chain_id", "seq", "prev_hash", "hash")


def chain_columns() -> list[sa.Column[object]]:
    """New ``Column`` objects of ``CHAIN_COLUMNS`` (for a table, or for a migration)."""
    return [
        sa.Column("chain_id", sa.String(32)),
        sa.Column("seq", sa.BigInteger()),
        sa.Column("prev_hash", sa.String(64)),
        sa.Column("hash", sa.String(64)),
    ]


def event_tables(table: str = DEFAULT_TABLE) -> tuple[sa.MetaData, sa.Table, sa.Table]:
    """The events table and its schema-version table (``<table>_schema``)."""
    metadata = sa.MetaData()
    time_type = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    events = sa.Table(
        table,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("event_id", sa.String(32), nullable=False, unique=True),
        sa.Column("time", time_type, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        *(
            sa.Column(name, sa.String(length), nullable=name not in REQUIRED_STRINGS)
            for name, length in STRING_COLUMNS
        ),
        sa.Column("status", sa.Integer()),
        sa.Column("duration_ms", sa.Float()),
        sa.Column("data", json_type, nullable=False),
        *chain_columns(),
    )
    # The report scans a time window (time, outcome+time) and groups within it;
    # investigations follow one token or request.  Every further index would be
    # paid on each insert.
    for columns in (
        ("time",),
        ("outcome", "time"),
        ("token_fingerprint",),
        ("request_id",),
    ):
        sa.Index(f"ix_{table}_{'_'.join(columns)}", *(events.c[c] for c in columns))
    version = sa.Table(
        f"{table}_schema",
        metadata,
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("applied_at", sa.DateTime(), nullable=False),
    )
    return metadata, events, version
