"""``jwt-audit ingest``: JSON-lines audit files loaded into the SQL table, out of the app.

The request path writes JSON lines (the cheapest sink); this loads them into
the table ``SQLAuditHandler`` writes and ``jwt-audit report`` reads, in
batches, from another process, so no database driver runs under the serving
process's GIL.

Exactly once, across crashes: each batch's rows and the position reached in
its file are committed in one transaction (the checkpoint lives in the
database, table ``<table>_ingest``), so a killed ingester restarts where the
last commit left off, neither losing nor doubling a line.  A line's
``event_id`` is derived from the line itself (its time, then a hash of its
bytes), so even a batch loaded twice by two ingesters stores each event once.

Files are known by device and inode, not by name: a rotated file keeps its
checkpoint under its new name (``audit.jsonl.20261208T010000Z``), and the new
file at the path starts from zero.  Give the live path; its rotated siblings
(``PATH.*``, not compressed ones) are found and finished first, oldest first.
A file that became shorter than its checkpoint was truncated in place and is
read again from the start.

Chained lines (``chain=True``) are stored like any event; the chain stays the
evidence in the files (``jwt-audit verify-log --file``), and the closing
records of streams are not events, so they are skipped.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .chain import CLOSING_EVENT
from .report import database_error
from .schema import DEFAULT_TABLE, event_tables
from .sinks.sql import ROW_COLUMNS, create_audit_engine, ensure_schema, event_row

#: Lines per transaction: large enough that a commit (an fsync) is amortised.
DEFAULT_BATCH = 5000
#: Bytes read from a file at a time.
_CHUNK = 4 * 1024 * 1024
#: Rows per SQLite INSERT statement: under its limit of 32,766 bound values.
_SQLITE_ROWS = 32766 // len(ROW_COLUMNS)
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
_LEVELS = {"ERROR", "WARNING", "INFO", "DEBUG", "CRITICAL"}

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is an optional extra
    _loads = json.loads


@dataclass
class IngestStats:
    """What one ``ingest()`` run did."""

    events: int = 0
    """Lines stored (or already stored: a line loaded twice counts, is kept once)."""
    skipped: int = 0
    """Lines that are not audit events (bad JSON, not an object, chain closings)."""
    files: int = 0
    batches: int = 0
    seconds: float = 0.0
    per_file: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def checkpoint_table(metadata: sa.MetaData, table: str) -> sa.Table:
    """``<table>_ingest``: how far each file (by device and inode) has been loaded."""
    return sa.Table(
        f"{table}_ingest",
        metadata,
        sa.Column("source", sa.String(64), primary_key=True),  # "dev:inode"
        sa.Column("path", sa.String(1024), nullable=False),  # the name last seen, to read
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def files_of(path: str) -> list[str]:
    """``path``'s rotated siblings, oldest first, then ``path`` itself (when present)."""
    siblings = [
        name
        for name in glob.glob(glob.escape(path) + ".*")
        if not name.endswith(_COMPRESSED) and os.path.isfile(name)
    ]
    siblings.sort(key=lambda name: (os.stat(name).st_mtime, name))
    return [*siblings, path] if os.path.exists(path) else siblings


def event_id_of(line: bytes, event: dict[str, Any]) -> str:
    """32 hex digits: the event's time in milliseconds, then 80 bits of the line's hash.

    Deterministic (a line loaded twice keeps one row) and ordered by time like
    the handler's own ids, so inserts land at the end of the unique index.
    """
    when = _event_time(event.get("time")) or datetime.datetime(1970, 1, 1)
    return _millis_hex(when) + hashlib.sha256(line).hexdigest()[:20]


def _millis_hex(when: datetime.datetime) -> str:
    """A naive UTC time as 12 hex digits of milliseconds since the epoch."""
    millis = int(when.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
    return f"{millis & 0xFFFFFFFFFFFF:012x}"


def _event_time(value: object) -> datetime.datetime | None:
    if isinstance(value, str) and value.endswith("Z"):
        try:
            return datetime.datetime.fromisoformat(value[:-1])
        except ValueError:
            return None
    return None


class _Writer:
    """One transaction per batch: the rows, and the file's new position."""

    def __init__(self, engine: Engine, table: str) -> None:
        self.engine = engine
        metadata, self.events, version = event_tables(table)
        self.checkpoints = checkpoint_table(metadata, table)
        ensure_schema(engine, metadata, version)
        self.dialect = engine.dialect.name
        self.time_as_text = self.dialect == "sqlite"
        quote = engine.dialect.identifier_preparer
        self._table = quote.format_table(self.events)
        self._columns = ", ".join(quote.quote(c) for c in ROW_COLUMNS)
        self._checkpoint_table = quote.format_table(self.checkpoints)

    def positions(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(self.checkpoints.c.source, self.checkpoints.c.position)
            )
            return {str(source): int(position) for source, position in rows}

    def commit(self, rows: list[tuple[Any, ...]], source: str, path: str, position: int) -> None:
        """Store ``rows`` and ``position`` in one transaction.

        PostgreSQL: ``COPY`` straight into the table; a line already stored
        (the same lines in another file) fails the whole ``COPY``, and the batch
        then goes through a temporary table that skips stored ids.
        """
        if self.dialect == "postgresql":
            duplicate = self.engine.dialect.loaded_dbapi.IntegrityError
            try:
                self._transaction(rows, source, path, position, self._copy)
            except duplicate:
                self._transaction(rows, source, path, position, self._copy_skipping)
            return
        self._transaction(rows, source, path, position, self._insert)

    def _transaction(
        self,
        rows: list[tuple[Any, ...]],
        source: str,
        path: str,
        position: int,
        insert: Callable[[Any, list[tuple[Any, ...]]], None],
    ) -> None:
        raw = self.engine.raw_connection()
        try:
            cursor: Any = raw.cursor()
            if self.dialect == "sqlite":
                # A power cut may roll back the last commits: rows and position
                # together, so those lines are read again; a full sync per batch
                # buys nothing here.
                cursor.execute("PRAGMA synchronous=NORMAL")
                # The indexes on random keys (request_id, the ids' hash part) touch
                # pages all over: with SQLite's 2 MB default cache a row cost 23 µs
                # to insert, with 64 MB 13 µs (200,000 rows).
                cursor.execute("PRAGMA cache_size=-65536")
            if rows:
                insert(cursor, rows)
            self._save(cursor, source, path, position)
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()

    def _copy(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL: ``COPY`` the rows into the table."""
        with cursor.copy(f"COPY {self._table} ({self._columns}) FROM STDIN") as copy:
            write_row = copy.write_row
            for row in rows:
                write_row(row)

    def _copy_skipping(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL: ``COPY`` into a temporary table, then insert what is not stored yet."""
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS jwt_audit_ingest_batch "
            f"(LIKE {self._table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY jwt_audit_ingest_batch ({self._columns}) FROM STDIN") as copy:
            write_row = copy.write_row
            for row in rows:
                write_row(row)
        cursor.execute(
            f"INSERT INTO {self._table} ({self._columns}) "  # noqa: S608 - our names
            f"SELECT {self._columns} FROM jwt_audit_ingest_batch "
            "ON CONFLICT (event_id) DO NOTHING"
        )

    def _insert(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join(["?" if self.dialect == "sqlite" else "%s"] * len(ROW_COLUMNS))
        if self.dialect == "sqlite":
            self._insert_sqlite(cursor, rows, f"({marks})")
            return
        if self.dialect in ("mysql", "mariadb"):
            verb, tail = "INSERT IGNORE", ""
        else:
            verb, tail = "INSERT", ""
        cursor.executemany(
            f"{verb} INTO {self._table} ({self._columns}) VALUES ({marks}){tail}",
            rows,
        )

    def _insert_sqlite(self, cursor: Any, rows: list[tuple[Any, ...]], row_marks: str) -> None:
        """SQLite: many rows per statement, so the parsing of the next batch overlaps.

        SQLite runs a statement with the GIL released, but ``executemany``
        takes it back for every row, and then waits for the parsing thread to
        let go of it: one statement per ``_SQLITE_ROWS`` rows keeps the two
        apart.
        """
        for start in range(0, len(rows), _SQLITE_ROWS):
            chunk = rows[start : start + _SQLITE_ROWS]
            cursor.execute(
                f"INSERT INTO {self._table} ({self._columns}) "  # noqa: S608 - our names
                f"VALUES {', '.join([row_marks] * len(chunk))} ON CONFLICT (event_id) DO NOTHING",
                [value for row in chunk for value in row],
            )

    def _save(self, cursor: Any, source: str, path: str, position: int) -> None:
        mark = "?" if self.dialect == "sqlite" else "%s"
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        when: Any = now.isoformat(" ", "microseconds") if self.time_as_text else now
        values = (source, path[-1024:], position, when)
        update = "path = {0}, position = {1}, updated_at = {2}"
        if self.dialect in ("mysql", "mariadb"):
            tail = " ON DUPLICATE KEY UPDATE " + update.format(
                "VALUES(path)", "VALUES(position)", "VALUES(updated_at)"
            )
        else:
            tail = " ON CONFLICT (source) DO UPDATE SET " + update.format(
                "excluded.path", "excluded.position", "excluded.updated_at"
            )
        cursor.execute(
            f"INSERT INTO {self._checkpoint_table} (source, path, position, updated_at) "  # noqa: S608
            f"VALUES ({mark}, {mark}, {mark}, {mark}){tail}",
            values,
        )


def _rows(lines: list[bytes], as_text: bool, stats: IngestStats) -> list[tuple[Any, ...]]:
    """The table rows of complete lines; lines that are no audit event are counted, skipped."""
    rows: list[tuple[Any, ...]] = []
    last_time: object = None
    when: Any = None
    for line in lines:
        try:
            event = _loads(line)
        except ValueError:
            event = None
        if (
            not isinstance(event, dict)
            or "outcome" not in event
            or event.get("event") in (None, CLOSING_EVENT)
        ):
            stats.skipped += 1
            continue
        text = event.get("time")
        if text != last_time or last_time is None:
            parsed = _event_time(text) or datetime.datetime(1970, 1, 1)
            last_time = text
            when = parsed.isoformat(" ", "microseconds") if as_text else parsed
            stamp = _millis_hex(parsed)
        level = event.get("level")
        stored = _Stored(line.decode("utf-8", "replace"))
        rows.append(
            event_row(
                event,
                level if level in _LEVELS else "INFO",
                stamp + hashlib.sha256(line).hexdigest()[:20],  # event_id_of()
                when,
                stored.text,
            )
        )
    return rows


class _Stored:
    """The ``data`` of a row: the line as written, not encoded again."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def text(self, _event: object) -> str:
        return self._text


class _FileLoad:
    """One file loaded from its checkpoint to its last complete line, batch by batch."""

    def __init__(
        self, writer: _Writer, path: str, source: str, position: int, stats: IngestStats
    ) -> None:
        self.writer = writer
        self.path = path
        self.source = source
        self.position = position
        self.stats = stats

    def run(
        self, handle: Any, batch: int, stop: threading.Event, progress: Callable[[], None]
    ) -> None:
        """Read, parse and store; batch n+1 is parsed while batch n commits.

        The database works with the GIL released (SQLite's step, a server's
        answer), so one writer thread beside the parsing makes the two overlap.
        Batches commit one at a time, in order: positions only grow.
        """
        handle.seek(self.position)
        pending: list[bytes] = []
        rest = b""
        with ThreadPoolExecutor(1, thread_name_prefix="jwt-audit-ingest") as writer:
            in_flight: Future[None] | None = None
            while not stop.is_set():
                chunk = handle.read(_CHUNK)
                if not chunk:
                    break
                data = rest + chunk
                end = data.rfind(b"\n")
                if end < 0:
                    rest = data
                    continue
                rest = data[end + 1 :]
                pending.extend(data[:end].split(b"\n"))
                while len(pending) >= batch and not stop.is_set():
                    in_flight = self._submit(writer, in_flight, pending[:batch], progress)
                    del pending[:batch]
            if pending and not stop.is_set():
                in_flight = self._submit(writer, in_flight, pending, progress)
            if in_flight is not None:
                in_flight.result()
                progress()

    def _submit(
        self,
        writer: ThreadPoolExecutor,
        in_flight: Future[None] | None,
        lines: list[bytes],
        progress: Callable[[], None],
    ) -> Future[None]:
        """Parse ``lines`` here, then hand them to the writer once the last batch is in."""
        stats = self.stats
        end = self.position + sum(len(line) + 1 for line in lines)
        complete = [line for line in lines if line.strip()]
        rows = _rows(complete, self.writer.time_as_text, stats)
        if in_flight is not None:
            in_flight.result()  # raises the writer's error here
            progress()
        self.position = end  # what the batch handed over stores
        future = writer.submit(self.writer.commit, rows, self.source, self.path, end)
        future.add_done_callback(lambda done: self._count(done, len(rows)))
        return future

    def _count(self, done: Future[None], events: int) -> None:
        if not done.cancelled() and done.exception() is None:
            stats = self.stats
            stats.events += events
            stats.per_file[self.path] = stats.per_file.get(self.path, 0) + events
            stats.batches += 1


def ingest_file(  # noqa: PLR0917 - one call site, in ingest()
    writer: _Writer,
    path: str,
    positions: dict[str, int],
    batch: int,
    stats: IngestStats,
    stop: threading.Event,
    progress: Callable[[], None],
) -> None:
    """Load ``path`` from its checkpoint to its last complete line."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; stat of this very file
    except FileNotFoundError:
        return  # rotated away (and found again under its new name next round)
    with handle:
        state = os.fstat(handle.fileno())
        source = f"{state.st_dev}:{state.st_ino}"
        position = positions.get(source, 0)
        if state.st_size < position:  # truncated in place: the content is new
            position = 0
        if state.st_size == position:
            return
        stats.files += 1
        load = _FileLoad(writer, path, source, position, stats)
        load.run(handle, batch, stop, progress)
        positions[source] = load.position


def ingest(
    url: str,
    paths: Sequence[str],
    *,
    table: str | None = None,
    follow: bool = False,
    batch: int = DEFAULT_BATCH,
    poll_seconds: float = 1.0,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
) -> IngestStats:
    """Load ``paths`` (and their rotated siblings) into the table at ``url``.

    ``follow``: keep going, picking up new lines and rotations every
    ``poll_seconds``, until ``stop`` is set (the command sets it on SIGINT and
    SIGTERM, after the batch in hand commits).  ``out``: a terminal to show a
    progress line on.
    """
    if batch < 1:
        raise ValueError(f"--batch {batch}: give a positive number of lines")
    stop = stop or threading.Event()
    engine = create_audit_engine(url)
    stats = IngestStats()
    started = time.perf_counter()

    def show() -> None:
        if out is not None:
            elapsed = time.perf_counter() - started
            rate = stats.events / elapsed if elapsed > 0 else 0.0
            out.write(f"\r{stats.events:,} events ingested ({rate:,.0f}/s)   ")
            out.flush()

    try:
        writer = _Writer(engine, table or DEFAULT_TABLE)
        positions = writer.positions()
        while True:
            for path in paths:
                for name in files_of(path):
                    if stop.is_set():
                        break
                    ingest_file(writer, name, positions, batch, stats, stop, show)
            if not follow or stop.wait(poll_seconds):
                break
    finally:
        engine.dispose()
        stats.seconds = time.perf_counter() - started
        if out is not None and stats.batches:
            out.write("\n")
    return stats


def main(args: Any, out: TextIO) -> int:
    """The ``jwt-audit ingest`` command."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stats = ingest(
            args.db,
            args.file,
            table=args.table,
            follow=args.follow,
            batch=args.batch,
            stop=stop,
            out=sys.stderr if sys.stderr.isatty() else None,
        )
    except sa.exc.SQLAlchemyError as exc:  # down, refused, no such database: one line
        source = sa.engine.make_url(args.db).render_as_string(hide_password=True)
        raise OSError(f"{source}: {database_error(exc)}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    skipped = f", {stats.skipped} lines that are no audit event skipped" if stats.skipped else ""
    out.write(
        f"{stats.events} events from {stats.files} files in {stats.seconds:.1f} s "
        f"({stats.rate:,.0f}/s){skipped}\n"
    )
    return 0


__all__ = ["DEFAULT_BATCH", "IngestStats", "checkpoint_table", "files_of", "ingest"]
