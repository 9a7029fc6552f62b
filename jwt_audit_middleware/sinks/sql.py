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

With ``chain=True`` each row also gets ``chain_id``, ``seq``, ``prev_hash`` and
``hash`` (``jwt_audit_middleware.chain``), assigned on the writer thread as the
rows are built: the one thread that inserts them, in order, so ``id`` order is
``seq`` order within a stream.  ``data`` is then stored in canonical JSON (sorted
keys), still encoded once.  Records that never reach the table (spilled) are not
chained, so the table's stream shows no gap for them; rows chained but finally
spilled (refused by the database, or left over at close) show as missing.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import time
from collections.abc import Callable
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url

from jwt_audit_middleware._jsonfast import dumps as _dumps
from jwt_audit_middleware.audit import RECORD_ATTRIBUTE, JSONFormatter, make_record
from jwt_audit_middleware.chain import CLOSING_EVENT, Chain, canonical_json, load_key
from jwt_audit_middleware.errors import ConfigurationError
from jwt_audit_middleware.events import rfc3339
from jwt_audit_middleware.schema import (
    CHAIN_COLUMNS,
    DEFAULT_TABLE,
    REQUIRED_STRINGS,
    SCHEMA_VERSION,
    STRING_COLUMNS,
    chain_columns,
    event_tables,
)

from ._private import SPILL_NAME, SpillFile, default_spill_dir, fallback_dir, private_dir
from ._worker import BackgroundHandler, sink_logger

_DEFAULT_DRIVERS = {"postgresql": "psycopg", "postgres": "psycopg", "mysql": "pymysql"}


def normalise_url(url: str | URL) -> URL:
    """``postgresql://`` means psycopg (3), ``mysql://`` PyMySQL: the drivers of the extra."""
    parsed = make_url(url)
    driver = _DEFAULT_DRIVERS.get(parsed.drivername)
    if driver is not None:
        base = "postgresql" if parsed.drivername.startswith("postgres") else parsed.drivername
        parsed = parsed.set(drivername=f"{base}+{driver}")
    return parsed


def create_audit_engine(url: str | URL, **options: Any) -> Engine:
    """An engine for the audit store; SQLite files: WAL, synchronous=FULL, a busy timeout."""
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
                    # 16 KiB pages for a new file (a no-op on an existing one): an
                    # event row is ~1 KiB, and each page written costs the WAL
                    # and the checkpoint a write; this makes inserts ~25% cheaper
                    cursor.execute("PRAGMA page_size = 16384")
                    cursor.execute("PRAGMA journal_mode = WAL")
                    # FULL: each commit syncs the WAL, so a committed batch survives a
                    # power cut too; one fsync per batch (of up to batch_size events)
                    # measured no slower than NORMAL, which syncs at checkpoints only
                    cursor.execute("PRAGMA synchronous = FULL")
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
    if stored is not None and stored < SCHEMA_VERSION:
        events = next(t for t in metadata.sorted_tables if t is not version_table)
        _add_chain_columns(engine, events.name)
        stored = None  # record this version
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


def _add_chain_columns(engine: Engine, table: str) -> None:
    """Schema version 1 to 2: the nullable chain columns, added where missing.

    Several processes may upgrade one table at once: a column another has just
    added is not an error.
    """
    quote = engine.dialect.identifier_preparer
    for attempt in range(3):
        present = {column["name"] for column in sa.inspect(engine).get_columns(table)}
        missing = [column for column in chain_columns() if column.name not in present]
        if not missing:
            return
        try:
            for column in missing:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as connection:
                    connection.exec_driver_sql(
                        f"ALTER TABLE {quote.quote(table)} "
                        f"ADD COLUMN {quote.quote(column.name)} {kind}"
                    )
        except sa_exc.DBAPIError:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))  # added by another process meanwhile: look again


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _parse_time(value: object, fallback: float) -> datetime.datetime:
    parsed = _event_time(value)
    if parsed is not None:
        return parsed
    return datetime.datetime.fromtimestamp(fallback, datetime.timezone.utc).replace(tzinfo=None)


def _event_time(value: object) -> datetime.datetime | None:
    """The event's RFC 3339 ``time`` as a naive UTC datetime; None if it is not one."""
    if isinstance(value, str) and value.endswith("Z"):
        try:
            parsed = datetime.datetime.fromisoformat(value[:-1])
        except ValueError:
            return None
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return parsed
    return None


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _fit(value: object, length: int) -> str:
    text = value if type(value) is str else str(value)
    return text if len(text) <= length else text[: length - 1] + "…"


#: Every column an insert fills (``id`` is the database's), in the order of a row.
ROW_COLUMNS = (
    "event_id",
    "time",
    "level",
    *(name for name, _ in STRING_COLUMNS),
    "status",
    "duration_ms",
    "data",
)
# each string column with what a missing (or None) field becomes: NULL, or
# "unknown" in a NOT NULL column
_STRING_FIELDS = tuple(
    (name, length, "unknown" if name in REQUIRED_STRINGS else None)
    for name, length in STRING_COLUMNS
)


def new_event_ids(count: int) -> list[str]:
    """``count`` fresh ``event_id`` values: 32 hex digits, ordered by time.

    The first 12 digits are the current time in milliseconds, the other 20 are
    random (80 bits), so a new id lands at the end of the unique index instead
    of on a random page of it: each batch touches a few index pages rather
    than one per row, which is what keeps inserts fast as the table grows.
    """
    stamp = f"{int(time.time() * 1000) & 0xFFFFFFFFFFFF:012x}"
    noise = os.urandom(10 * count).hex()
    return [stamp + noise[i : i + 20] for i in range(0, 20 * count, 20)]


def event_row(
    event: dict[str, Any],
    level: str,
    event_id: str,
    when: Any,
    encode: Callable[[Any], str] = _dumps,
) -> tuple[Any, ...]:
    """The table row of one event, in ``ROW_COLUMNS`` order.

    ``time`` is ``when`` and ``data`` the event's JSON text (``encode``'s).  Strings longer
    than their column end in "…", other values become ``str()``; a missing
    ``event`` or ``outcome`` is "unknown".  Values are what every driver takes
    as they are, so the insert skips per-value type processing.

    Plain code on purpose (issue 11): the ``exec``-built function it replaced
    saved ~0.8 µs per event on the writer thread in ``timeit``, a difference
    ``bench/bench_sinks.py`` does not show end to end (SQLite or PostgreSQL).
    """
    get = event.get
    row: list[Any] = [event_id, when, level]
    append = row.append
    for name, length, missing in _STRING_FIELDS:
        value = get(name)
        if value is None:
            value = missing
        elif type(value) is not str or len(value) > length:
            value = _fit(value, length)
        append(value)
    status = get("status")
    duration = get("duration_ms")
    append(status if type(status) is int else None)
    append(duration if type(duration) is float else _number(duration))
    append(encode(event))
    return tuple(row)


_TRANSIENT = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    OSError,
)


class SQLAuditHandler(BackgroundHandler):
    """A logging handler that stores audit events in a SQL database.

    ``url`` is a SQLAlchemy URL: ``sqlite:///audit.db`` (embedded, WAL mode,
    ``synchronous=FULL``), ``postgresql://user:pw@host/db`` (psycopg 3; batches go
    in with ``COPY``) or ``mysql://...`` (PyMySQL, also for MariaDB).  Records
    without an audit event (``record.jwt_audit``), such as tracebacks on
    ``jwt_audit.internal``, are not stored.

    Rows are inserted by a background thread in batches of ``batch_size``, at
    least every ``flush_interval`` seconds.  The queue holds ``queue_size``
    records; when it is full the request thread waits up to ``block_timeout``
    seconds, then the record is appended to ``spill_path`` (JSON lines; default
    ``<database file>.spill.jsonl`` for SQLite, otherwise ``jwt-audit-spill.jsonl``
    in a private directory, ``$XDG_STATE_HOME/jwt-audit/`` or
    ``~/.local/state/jwt-audit/``, created 0700) and counted in
    ``stats()["spilled"]``.  A spill file is created 0600 and must stay a
    regular file of ours that nobody else can read: a symbolic link or another
    user's file is refused (reported on ``jwt_audit_middleware.sinks``, those
    records go to stderr), see ``_private``.

    A failed batch (the database is down, restarting, locked) is kept and
    retried with exponential backoff up to ``max_retry_delay`` seconds between
    attempts, for as long as it takes; while it waits the queue fills and then
    spills.  A batch the database refuses for another reason (bad data) is
    inserted row by row and the rows it still refuses are spilled.  No event is
    stored twice: each gets an ``event_id`` once, and an ``event_id`` already in
    the table is skipped.  ``close()`` (also run at process exit) writes
    everything queued, waiting up to ``close_timeout`` seconds for an outage to
    end, and spills what is still left.

    ``chain=True`` makes the table tamper-evident (``jwt-audit verify-log``):
    each row gets ``chain_id``, ``seq``, ``prev_hash`` and ``hash``; with
    ``chain_key`` (bytes or str) or ``chain_key_file`` the hash is an
    HMAC-SHA256, so only holders of the key can re-chain an edited table.
    ``close()`` stores a closing row (``event="chain_closed"``).

    ``engine_options`` go to ``sqlalchemy.create_engine`` (for SQLite the
    default ``isolation_level`` is ``"AUTOCOMMIT"``: a full batch is one
    statement, hence its own transaction; the others get an explicit one).
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
        chain: bool = False,
        chain_key: bytes | str | None = None,
        chain_key_file: str | os.PathLike[str] | None = None,
        metrics: object = None,
    ) -> None:
        key = load_key(chain_key, chain_key_file)
        if key is not None and not chain:
            option = "chain_key" if chain_key is not None else "chain_key_file"
            raise ConfigurationError(option, "a chain key needs chain=True")
        self._chain = Chain(key) if chain else None
        #: The columns an insert fills, in the order of a row.
        self._columns = (*ROW_COLUMNS, *CHAIN_COLUMNS) if chain else ROW_COLUMNS
        super().__init__(
            level,
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval=flush_interval,
            block_timeout=block_timeout,
            close_timeout=close_timeout,
            metrics=metrics,
        )
        options = dict(engine_options or {})
        if normalise_url(url).get_backend_name() == "sqlite":
            # a batch that is one statement is then its own transaction (see
            # _insert_sqlite); set once per connection, since changing it later
            # empties sqlite3's statement cache
            options.setdefault("isolation_level", "AUTOCOMMIT")
        self.engine = create_audit_engine(url, **options)
        self._autocommit = options.get("isolation_level") == "AUTOCOMMIT"
        self.table_name = table
        self.metadata, self.table, self.version_table = event_tables(table)
        self._max_retry_delay = max_retry_delay
        self._schema_ready = False
        # _spill_dir_unchecked: the default directory, made (0700) and checked
        # at the first spill
        self.spill_path, self._spill_dir_unchecked = (
            (os.fspath(spill_path), False) if spill_path else self._default_spill_path()
        )
        self._spill_handler: SpillFile | None = None
        self._json = JSONFormatter()  # the spill's lines, should they go to stderr
        dialect = self.engine.dialect.name
        # every driver here takes the text SQLAlchemy stores on SQLite; others get datetimes
        self._time_as_text = dialect in ("sqlite", "postgresql", "mysql", "mariadb")
        self._insert, self._order = self._insert_statement()
        self._copy = self._copy_statement() if self.engine.driver == "psycopg" else None
        self._sizes: list[int] | None = None  # SQLite: rows per multi-row INSERT
        self._multirow: dict[int, str] = {}  # and its statement for each size
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

    def _default_spill_path(self) -> tuple[str, bool]:
        """Beside a SQLite file; else in the private state directory (to be checked)."""
        database = self.engine.url.database
        if self.engine.dialect.name == "sqlite" and database not in (None, "", ":memory:"):
            return os.path.abspath(database) + ".spill.jsonl", False
        return os.path.join(default_spill_dir(), SPILL_NAME), True

    def _insert_statement(self) -> tuple[str, tuple[int, ...] | None]:
        """The INSERT in the driver's own SQL, and where its parameters are in a row.

        Compiled once; rows then go straight to the driver's ``executemany``
        (SQLite's, PyMySQL's one multi-row INSERT), skipping SQLAlchemy's
        per-value processing, which would cost more than the insert.  The
        positions are None for a driver that takes named parameters.
        """
        name = self.engine.dialect.name
        values: dict[str, Any] = {column: sa.bindparam(column) for column in self._columns}
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
        dialect: Any = self.engine.dialect
        if self.engine.driver in ("psycopg", "pymysql") and dialect.paramstyle == "pyformat":
            # both also take positional ``%s``: rows then go as they are, no dict each
            dialect = type(dialect)(paramstyle="format")
        compiled = statement.compile(dialect=dialect)
        if not compiled.positional:
            return str(compiled), None
        order = tuple(self._columns.index(column) for column in compiled.positiontup or ())
        return str(compiled), order

    def _copy_statement(self) -> str:
        """PostgreSQL's ``COPY ... FROM STDIN`` of a row's columns."""
        quote = self.engine.dialect.identifier_preparer
        columns = ", ".join(quote.quote(column) for column in self._columns)
        return f"COPY {quote.format_table(self.table)} ({columns}) FROM STDIN"

    # -- the writer thread ------------------------------------------------------------

    def prepare(self, records: list[logging.LogRecord]) -> list[tuple[Any, ...]]:
        """One row per audit record, each with its ``event_id`` fixed for every retry."""
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        ids = new_event_ids(len(records))
        as_text = self._time_as_text
        # a chained row's data is canonical JSON (sorted keys): hashed as stored
        encode = _dumps if self._chain is None else canonical_json
        last_time: object = None
        when: Any = None
        for record in records:
            event = getattr(record, RECORD_ATTRIBUTE, None)
            if not isinstance(event, dict):
                continue  # not an audit event (a traceback on jwt_audit.internal)
            text = event.get("time")
            if text != last_time or last_time is None:  # events of one millisecond share it
                parsed = _event_time(text)
                last_time = None if parsed is None else text
                if parsed is None:
                    parsed = _parse_time(None, record.created)
                # SQLAlchemy's storage format for DateTime on SQLite
                when = parsed.isoformat(" ", "microseconds") if as_text else parsed
            append(event_row(event, record.levelname, ids[len(rows)], when, encode))
        if self._chain is not None:
            return self._sealed(rows)
        return rows

    def _sealed(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The rows with their chain columns, in the order they are inserted."""
        assert self._chain is not None
        seal = self._chain.seal_row
        sealed: list[tuple[Any, ...]] = []
        append = sealed.append
        last_when: Any = None
        when_text = ""
        for row in rows:
            when = row[1]
            if when is not last_when:
                last_when = when
                when_text = when if type(when) is str else when.isoformat(" ", "microseconds")
            append((*row, *seal(row[0], row[2], when_text, row[-1])))
        return sealed

    def write_batch(self, prepared: list[tuple[Any, ...]]) -> None:
        """Insert the rows in one transaction."""
        if not prepared:
            return
        try:
            if not self._schema_ready:
                ensure_schema(self.engine, self.metadata, self.version_table)
                self._schema_ready = True
            if self._copy is not None:
                self._write_copy(prepared)
            else:
                self._write_insert(prepared)
        except Exception:
            self._schema_ready = False  # a dropped table or a new database: look again
            raise

    def _write_insert(self, rows: list[tuple[Any, ...]]) -> None:
        """The INSERT that skips stored ``event_id`` values, in one transaction."""
        if self.engine.dialect.name == "sqlite":
            self._insert_sqlite(rows)
            return
        order = self._order
        parameters: Any
        if order is None:
            parameters = [dict(zip(self._columns, row, strict=True)) for row in rows]
        elif order == tuple(range(len(self._columns))):
            parameters = rows
        else:
            parameters = [tuple(row[i] for i in order) for row in rows]
        with self.engine.begin() as connection:
            connection.exec_driver_sql(self._insert, parameters)  # the driver's executemany

    def _insert_sqlite(self, rows: list[tuple[Any, ...]]) -> None:
        """SQLite: a whole batch in one INSERT statement, when it can be.

        SQLite does a statement's work with the GIL released, and the writer
        must take the GIL back after each statement, which costs up to a
        switch interval (5 ms) while request threads run Python; so a batch
        is as few statements as possible (``executemany`` would be one per
        row).  A full batch (``batch_size`` rows, within SQLite's variable
        limit) is one statement, which on the autocommit connection is its own
        transaction: no BEGIN and COMMIT to wait for.  Other batches are split
        into statements of a few fixed sizes (halving from the full one down
        to 32 rows, so SQLite's statement cache holds a handful of shapes)
        plus one-row INSERTs for the rest, in one transaction.
        """
        pieces: list[tuple[str, tuple[Any, ...]]] = []
        start, count = 0, len(rows)
        for size in self._sqlite_sizes():
            while count - start >= size:
                statement = self._multirow.get(size)
                if statement is None:
                    statement = self._multirow[size] = self._multirow_insert(size)
                pieces.append((statement, tuple(chain.from_iterable(rows[start : start + size]))))
                start += size
        with self.engine.connect() as connection:
            if not self._autocommit:  # engine_options chose another isolation level
                with connection.begin():
                    self._execute_pieces(connection, pieces, rows[start:])
            elif len(pieces) == 1 and start == count:
                connection.exec_driver_sql(*pieces[0])
            else:
                connection.exec_driver_sql("BEGIN")
                try:
                    self._execute_pieces(connection, pieces, rows[start:])
                    connection.exec_driver_sql("COMMIT")
                except BaseException:
                    with contextlib.suppress(sa_exc.SQLAlchemyError):
                        connection.exec_driver_sql("ROLLBACK")
                    raise

    def _execute_pieces(
        self,
        connection: sa.Connection,
        pieces: list[tuple[str, tuple[Any, ...]]],
        rest: list[tuple[Any, ...]],
    ) -> None:
        for statement, parameters in pieces:
            connection.exec_driver_sql(statement, parameters)
        if rest:
            connection.exec_driver_sql(self._insert, rest)  # executemany

    def _sqlite_sizes(self) -> list[int]:
        """Rows per multi-row INSERT: the full batch (within the limit), halved down to 32."""
        if self._sizes is None:
            limit = 999  # SQLite's default before 3.32; getlimit() is Python 3.11+
            import sqlite3  # noqa: PLC0415 - a Python without it can still use a server

            with (
                contextlib.closing(sqlite3.connect(":memory:")) as probe,
                contextlib.suppress(AttributeError),
            ):
                limit = probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            size = max(1, min(self.batch_size, 2048, limit // len(self._columns)))
            sizes = [size]
            while size // 2 >= 32:
                size //= 2
                sizes.append(size)
            self._sizes = sizes
        return self._sizes

    def _multirow_insert(self, count: int) -> str:
        quote = self.engine.dialect.identifier_preparer
        columns = ", ".join(quote.quote(column) for column in self._columns)
        row = "(" + ", ".join("?" * len(self._columns)) + ")"
        return (  # identifiers quoted by the dialect, values all parameters
            f"INSERT INTO {quote.format_table(self.table)} ({columns}) "  # noqa: S608
            f"VALUES {', '.join([row] * count)} ON CONFLICT (event_id) DO NOTHING"
        )

    def _write_copy(self, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL: ``COPY`` the rows in; if one is already stored, the INSERT instead.

        ``COPY`` costs the server and this thread a fraction of an INSERT per row,
        but it cannot skip a row: one ``event_id`` already stored (a batch
        retried after a commit whose acknowledgement was lost) fails the whole
        ``COPY`` and rolls it back, and the batch then goes through the INSERT
        that skips stored ids.  So no event is stored twice either way.
        """
        assert self._copy is not None
        dialect = self.engine.dialect
        dbapi = dialect.loaded_dbapi
        raw = None
        duplicate = False
        try:
            raw = self.engine.raw_connection()
            cursor: Any = raw.cursor()  # psycopg's, with copy()
            with cursor, cursor.copy(self._copy) as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)
            raw.commit()
        except dbapi.Error as exc:
            # the driver's own exception, as SQLAlchemy would have raised it
            if raw is not None:
                with contextlib.suppress(dbapi.Error):
                    raw.rollback()
            duplicate = isinstance(exc, dbapi.IntegrityError)
            if not duplicate:
                invalidated = raw is not None and dialect.is_disconnect(
                    exc, raw.driver_connection, None
                )
                if invalidated and raw is not None:
                    raw.invalidate(exc)
                raise sa_exc.DBAPIError.instance(
                    self._copy,
                    None,
                    exc,
                    dbapi.Error,
                    hide_parameters=True,
                    connection_invalidated=invalidated,
                    dialect=dialect,
                ) from exc
        finally:
            if raw is not None:
                raw.close()
        if duplicate:
            self._write_insert(rows)

    def write_individually(
        self, records: list[logging.LogRecord], prepared: list[tuple[Any, ...]]
    ) -> None:
        """Insert row by row; spill the rows the database still refuses."""
        events = [r for r in records if isinstance(getattr(r, RECORD_ATTRIBUTE, None), dict)]
        refused = []
        for record, row in zip(events, prepared, strict=True):
            try:
                self.write_batch([row])
            except sa_exc.IntegrityError:
                if not self._has(row[0]):  # event_id
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
        dbapi = self.engine.dialect.loaded_dbapi  # the driver's own, should one get through
        return isinstance(exc, (*_TRANSIENT, dbapi.OperationalError, dbapi.InterfaceError))

    def max_retry_delay(self) -> float:
        """``max_retry_delay``."""
        return self._max_retry_delay

    # -- spilling and closing ------------------------------------------------------------

    def spill(self, records: list[logging.LogRecord]) -> None:
        """Append the records to the local JSON-lines spill file, on the calling thread.

        Never raises: if the spill file cannot be opened (or is refused as not
        private), that is logged on ``jwt_audit_middleware.sinks`` and the
        records' lines go to stderr.
        """
        with self._spill_lock:
            handler = self._spill_handler
            if handler is None:
                try:
                    handler = self._spill_handler = SpillFile(self._spill_file_path())
                except OSError as exc:
                    error = exc
        if handler is None:
            sink_logger.error(
                "SQLAuditHandler: cannot spill to %s (%s); %d records written to stderr",
                self.spill_path,
                error,
                len(records),
            )
            sys.stderr.write("".join(self._json.format(record) + "\n" for record in records))
            sys.stderr.flush()
            return
        handler.spill([handler.enqueued(record) for record in records])

    def _spill_file_path(self) -> str:
        """The spill path, its default directory made private first (or replaced)."""
        if self._spill_dir_unchecked:
            directory = os.path.dirname(self.spill_path)
            try:
                private_dir(directory)
            except OSError as exc:
                fallback = fallback_dir()
                sink_logger.warning(
                    "SQLAuditHandler: cannot spill in %s (%s); using %s",
                    directory,
                    exc,
                    fallback,
                )
                self.spill_path = os.path.join(fallback, SPILL_NAME)
            self._spill_dir_unchecked = False
        return self.spill_path

    def spill_target(self) -> str:
        """The spill file."""
        return self.spill_path

    def release_resources(self) -> None:
        """Close the spill file and the connection pool."""
        with self._spill_lock:
            handler, self._spill_handler = self._spill_handler, None
        if handler is not None:
            handler.close()
        self.engine.dispose()

    def close(self) -> None:
        """Store everything queued and (``chain=True``) the stream's closing row.

        See ``BackgroundHandler.close``.  The closing row goes in last, through
        the writer, and only for a stream that has rows.
        """
        chain = self._chain
        if chain is not None and not self._closed and (chain.seq or self._queue):
            event = {
                "schema": "jwt-audit/1",
                "event": CLOSING_EVENT,
                "outcome": "closed",
                "time": rfc3339(time.time()),
                "detail": "the writer closed this stream",
            }
            self.emit(make_record(logging.getLogger("jwt_audit"), logging.INFO, (), event))
        super().close()

    @property
    def chain_id(self) -> str | None:
        """The id of this handler's stream (``chain=True``), else None."""
        return None if self._chain is None else self._chain.chain_id

    def _after_fork(self) -> None:
        super()._after_fork()
        self.engine.dispose(close=False)  # the parent's connections stay the parent's
        self._spill_handler = None
        if self._chain is not None:
            self._chain.restart()  # the child is a writer of its own: a stream of its own

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"<SQLAuditHandler {url} ({logging.getLevelName(self.level)})>"
