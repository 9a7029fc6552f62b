"""``SQLAuditHandler``: audit events stored in a SQL table, through SQLAlchemy Core.

One table (``jwt_audit_events`` by default) holds one row per event: typed,
indexed columns for what people filter on, plus the whole event as JSON.  It is
created on first use, with a schema-version table beside it
(``<table>_schema``) for future migrations.

Delivery, in short: the request thread only enqueues the record; a background
thread inserts batches; a failed batch is kept and retried with backoff until
the database is back; every event carries an ``event_id`` generated once, and
the insert skips an ``event_id`` that is already stored, so a batch retried
after a commit whose acknowledgement was lost is not stored twice.  See
``BackgroundHandler`` for the full-queue policy (block briefly, then spill to a
local JSON-lines file, counted).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import tempfile
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url

from jwt_audit_middleware.audit import RECORD_ATTRIBUTE

from ._worker import BackgroundHandler, sink_logger
from .jsonl import JSONLinesHandler

#: Version of the table layout; stored in ``<table>_schema``.
SCHEMA_VERSION = 1
DEFAULT_TABLE = "jwt_audit_events"

_DEFAULT_DRIVERS = {"postgresql": "psycopg", "postgres": "psycopg", "mysql": "pymysql"}
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

# (column, length) of the typed string columns, filled from the event's fields
_STRINGS = (
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
            sa.Column(name, sa.String(length), nullable=name not in ("event", "outcome"))
            for name, length in _STRINGS
        ),
        sa.Column("status", sa.Integer()),
        sa.Column("duration_ms", sa.Float()),
        sa.Column("data", json_type, nullable=False),
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


def normalise_url(url: str | URL) -> URL:
    """``postgresql://`` means psycopg (3), ``mysql://`` PyMySQL: the drivers of the extra."""
    parsed = make_url(url)
    driver = _DEFAULT_DRIVERS.get(parsed.drivername)
    if driver is not None:
        base = "postgresql" if parsed.drivername.startswith("postgres") else parsed.drivername
        parsed = parsed.set(drivername=f"{base}+{driver}")
    return parsed


def create_audit_engine(url: str | URL, **options: Any) -> Engine:
    """An engine for the audit store; SQLite files get WAL mode and a busy timeout."""
    parsed = normalise_url(url)
    options.setdefault("json_serializer", _dumps)
    if parsed.get_backend_name() != "sqlite":
        options.setdefault("pool_pre_ping", True)
        options.setdefault("pool_size", 2)
    engine = sa.create_engine(parsed, **options)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA busy_timeout = 10000")
                if parsed.database not in (None, "", ":memory:"):
                    cursor.execute("PRAGMA journal_mode = WAL")
                    cursor.execute("PRAGMA synchronous = NORMAL")
            finally:
                cursor.close()

    return engine


def ensure_schema(engine: Engine, metadata: sa.MetaData, version_table: sa.Table) -> None:
    """Create the tables if needed and check (or record) the schema version."""
    for attempt in range(3):
        try:
            metadata.create_all(engine, checkfirst=True)
            break
        except sa_exc.DBAPIError:
            # another process created them at the same moment: look again
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    with engine.begin() as connection:
        stored = connection.execute(sa.select(sa.func.max(version_table.c.version))).scalar()
    if stored is None:
        try:
            with engine.begin() as connection:
                connection.execute(
                    version_table.insert().values(version=SCHEMA_VERSION, applied_at=_utcnow())
                )
        except sa_exc.IntegrityError:
            pass  # recorded by another process meanwhile
    elif stored > SCHEMA_VERSION:
        raise RuntimeError(
            f"the audit table has schema version {stored}; this version of "
            f"jwt_audit_middleware writes version {SCHEMA_VERSION}: upgrade it"
        )


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _parse_time(value: object, fallback: float) -> datetime.datetime:
    if isinstance(value, str) and value.endswith("Z"):
        try:
            return datetime.datetime.fromisoformat(value[:-1])
        except ValueError:
            pass
    return datetime.datetime.fromtimestamp(fallback, datetime.timezone.utc).replace(tzinfo=None)


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


#: Every column an insert fills (``id`` is the database's).
ROW_COLUMNS = (
    "event_id",
    "time",
    "level",
    *(name for name, _ in _STRINGS),
    "status",
    "duration_ms",
    "data",
)


def event_row(event: dict[str, Any], level: str, created: float) -> dict[str, Any]:
    """The table row of one event, with a fresh ``event_id``; ``data`` is JSON text.

    Values are what every driver takes as they are (``str``, ``int``, ``float``,
    ``None``, ``datetime``), so the insert skips per-value type processing.
    """
    status = event.get("status")
    row: dict[str, Any] = {
        "event_id": os.urandom(16).hex(),
        "time": _parse_time(event.get("time"), created),
        "level": level,
        "status": status if type(status) is int else None,
        "duration_ms": _number(event.get("duration_ms")),
        "data": _dumps(event),
    }
    get = event.get
    for name, length in _STRINGS:
        value = get(name)
        if value is not None:
            if type(value) is not str:
                value = str(value)
            if len(value) > length:
                value = value[: length - 1] + "…"
        row[name] = value
    if row["event"] is None:
        row["event"] = "unknown"
    if row["outcome"] is None:
        row["outcome"] = "unknown"
    return row


_TRANSIENT = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    OSError,
)


class SQLAuditHandler(BackgroundHandler):
    """A logging handler that stores audit events in a SQL database.

    ``url`` is a SQLAlchemy URL: ``sqlite:///audit.db`` (embedded, WAL mode),
    ``postgresql://user:pw@host/db`` (psycopg 3) or ``mysql://...`` (PyMySQL,
    also for MariaDB).  Records without an audit event (``record.jwt_audit``),
    such as tracebacks on ``jwt_audit.internal``, are not stored.

    Rows are inserted by a background thread in batches of ``batch_size``, at
    least every ``flush_interval`` seconds.  The queue holds ``queue_size``
    records; when it is full the request thread waits up to ``block_timeout``
    seconds, then the record is appended to ``spill_path`` (JSON lines; default
    ``<database file>.spill.jsonl`` for SQLite, ``jwt-audit-spill.jsonl`` in the
    temporary directory otherwise) and counted in ``stats()["spilled"]``.

    A failed batch (the database is down, restarting, locked) is kept and
    retried with exponential backoff up to ``max_retry_delay`` seconds between
    attempts, for as long as it takes; while it waits the queue fills and then
    spills.  A batch the database refuses for another reason (bad data) is
    inserted row by row and the rows it still refuses are spilled.  No event is
    stored twice: each gets an ``event_id`` once, and an ``event_id`` already in
    the table is skipped.  ``close()`` (also run at process exit) writes
    everything queued, waiting up to ``close_timeout`` seconds for an outage to
    end, and spills what is still left.

    ``engine_options`` go to ``sqlalchemy.create_engine``.
    """

    def __init__(
        self,
        url: str | URL,
        level: int | str = logging.NOTSET,
        *,
        table: str = DEFAULT_TABLE,
        queue_size: int = 20_000,
        batch_size: int = 2000,
        flush_interval: float = 0.5,
        block_timeout: float = 0.1,
        close_timeout: float = 30.0,
        max_retry_delay: float = 5.0,
        spill_path: str | os.PathLike[str] | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            level,
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval=flush_interval,
            block_timeout=block_timeout,
            close_timeout=close_timeout,
        )
        self.engine = create_audit_engine(url, **(engine_options or {}))
        self.table_name = table
        self.metadata, self.table, self.version_table = event_tables(table)
        self._max_retry_delay = max_retry_delay
        self._schema_ready = False
        self.spill_path = os.fspath(spill_path) if spill_path else self._default_spill_path()
        self._spill_handler: JSONLinesHandler | None = None
        self._time_as_text = self.engine.dialect.name == "sqlite"
        self._insert, self._order = self._insert_statement()
        self._create_private_sqlite_file()

    def _create_private_sqlite_file(self) -> None:
        """A new SQLite store is readable by its owner only, like the JSON-lines file.

        It holds subjects and client addresses; SQLite gives its -wal and -shm
        files the database file's permissions.
        """
        database = self.engine.url.database
        if self.engine.dialect.name == "sqlite" and database not in (None, "", ":memory:"):
            with contextlib.suppress(FileExistsError):
                os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    def _default_spill_path(self) -> str:
        database = self.engine.url.database
        if self.engine.dialect.name == "sqlite" and database not in (None, "", ":memory:"):
            return os.path.abspath(database) + ".spill.jsonl"
        return os.path.join(tempfile.gettempdir(), "jwt-audit-spill.jsonl")

    def _insert_statement(self) -> tuple[str, tuple[str, ...] | None]:
        """The INSERT in the driver's own SQL, and the parameter order if positional.

        Compiled once; rows then go straight to the driver's ``executemany``
        (psycopg pipelines it, PyMySQL makes one multi-row INSERT), skipping
        SQLAlchemy's per-value processing, which would cost more than the insert.
        """
        name = self.engine.dialect.name
        values: dict[str, Any] = {column: sa.bindparam(column) for column in ROW_COLUMNS}
        statement: Any
        if name == "postgresql":
            statement = (
                postgresql.insert(self.table)
                .values(values)
                .on_conflict_do_nothing(index_elements=["event_id"])
            )
        elif name == "sqlite":
            statement = (
                sqlite.insert(self.table)
                .values(values)
                .on_conflict_do_nothing(index_elements=["event_id"])
            )
        elif name in ("mysql", "mariadb"):
            statement = mysql.insert(self.table).values(values)
            statement = statement.on_duplicate_key_update(event_id=statement.inserted.event_id)
        else:  # a duplicate then fails the batch, and its rows go one by one
            statement = self.table.insert().values(values)
        compiled = statement.compile(dialect=self.engine.dialect)
        order = compiled.positiontup if compiled.positional else None
        return str(compiled), None if order is None else tuple(order)

    # -- the writer thread ------------------------------------------------------------

    def prepare(self, records: list[logging.LogRecord]) -> list[dict[str, Any]]:
        """One row per audit record, each with its ``event_id`` fixed for every retry."""
        rows = []
        as_text = self._time_as_text
        for record in records:
            event = getattr(record, RECORD_ATTRIBUTE, None)
            if isinstance(event, dict):
                row = event_row(event, record.levelname, record.created)
                if as_text:  # SQLAlchemy's storage format for DateTime on SQLite
                    row["time"] = row["time"].isoformat(" ", "microseconds")
                rows.append(row)
        return rows

    def write_batch(self, prepared: list[dict[str, Any]]) -> None:
        """Insert the rows in one transaction."""
        if not prepared:
            return
        order = self._order
        parameters: Any = (
            prepared if order is None else [tuple(row[k] for k in order) for row in prepared]
        )
        try:
            if not self._schema_ready:
                ensure_schema(self.engine, self.metadata, self.version_table)
                self._schema_ready = True
            with self.engine.begin() as connection:
                connection.exec_driver_sql(self._insert, parameters)
        except Exception:
            self._schema_ready = False  # a dropped table or a new database: look again
            raise

    def write_individually(
        self, records: list[logging.LogRecord], prepared: list[dict[str, Any]]
    ) -> None:
        """Insert row by row; spill the rows the database still refuses."""
        events = [r for r in records if isinstance(getattr(r, RECORD_ATTRIBUTE, None), dict)]
        refused = []
        for record, row in zip(events, prepared, strict=True):
            try:
                self.write_batch([row])
            except sa_exc.IntegrityError:
                if not self._has(row["event_id"]):
                    refused.append(record)
            except Exception:  # noqa: BLE001 - spilled and counted, never dropped
                refused.append(record)
        if refused:
            sink_logger.error(
                "SQLAuditHandler: %d events refused by the database; spilled to %s",
                len(refused),
                self.spill_path,
            )
            self.spill(refused)
            self._count_spilled(len(refused))

    def _has(self, event_id: str) -> bool:
        try:
            with self.engine.connect() as connection:
                found = connection.execute(
                    sa.select(self.table.c.id).where(self.table.c.event_id == event_id)
                ).first()
        except sa_exc.SQLAlchemyError:
            return False
        return found is not None

    def retryable(self, exc: Exception) -> bool:
        """Connection problems, timeouts and locks are retried; refusals are not."""
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        return isinstance(exc, _TRANSIENT)

    def max_retry_delay(self) -> float:
        """``max_retry_delay``."""
        return self._max_retry_delay

    # -- spilling and closing ------------------------------------------------------------

    def spill(self, records: list[logging.LogRecord]) -> None:
        """Append the records to the local JSON-lines spill file, on the calling thread."""
        with self._spill_lock:
            if self._spill_handler is None:
                self._spill_handler = JSONLinesHandler(self.spill_path)
            handler = self._spill_handler
        handler.spill(records)

    def spill_target(self) -> str:
        """The spill file."""
        return self.spill_path

    def release_resources(self) -> None:
        """Close the spill file and the connection pool."""
        if self._spill_handler is not None:
            self._spill_handler.close()
        self.engine.dispose()

    def _after_fork(self) -> None:
        super()._after_fork()
        self.engine.dispose(close=False)  # the parent's connections stay the parent's
        self._spill_handler = None

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"<SQLAuditHandler {url} ({logging.getLevelName(self.level)})>"
