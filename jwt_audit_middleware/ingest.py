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
from dataclasses import dataclass, field
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .chain import CLOSING_EVENT
from .schema import DEFAULT_TABLE, event_tables
from .sinks.sql import ROW_COLUMNS, create_audit_engine, ensure_schema, event_row

#: Lines per transaction: large enough that a commit (an fsync) is amortised.
DEFAULT_BATCH = 5000
#: Bytes read from a file at a time.
_CHUNK = 4 * 1024 * 1024
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
    when = _event_time(event.get("time"))
    millis = (
        0 if when is None else int(when.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)
    )
    return f"{millis & 0xFFFFFFFFFFFF:012x}" + hashlib.sha256(line).hexdigest()[:20]


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
        raw = self.engine.raw_connection()
        try:
            cursor: Any = raw.cursor()
            if rows:
                if self.dialect == "postgresql":
                    self._copy(cursor, rows)
                else:
                    self._insert(cursor, rows)
            self._save(cursor, source, path, position)
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()

    def _copy(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
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
            verb, tail = "INSERT", " ON CONFLICT (event_id) DO NOTHING"
        elif self.dialect in ("mysql", "mariadb"):
            verb, tail = "INSERT IGNORE", ""
        else:
            verb, tail = "INSERT", ""
        cursor.executemany(
            f"{verb} INTO {self._table} ({self._columns}) VALUES ({marks}){tail}",
            rows,
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
        level = event.get("level")
        stored = _Stored(line.decode("utf-8", "replace"))
        rows.append(
            event_row(
                event,
                level if level in _LEVELS else "INFO",
                event_id_of(line, event),
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
        handle.seek(self.position)
        pending: list[bytes] = []
        rest = b""
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
                self.commit(pending[:batch])
                del pending[:batch]
                progress()
        if pending and not stop.is_set():
            self.commit(pending)
            progress()

    def commit(self, lines: list[bytes]) -> None:
        """Store ``lines`` (complete, without newlines) and the position after them, at once."""
        stats = self.stats
        end = self.position + sum(len(line) + 1 for line in lines)
        before = stats.skipped
        complete = [line for line in lines if line.strip()]
        rows = _rows(complete, self.writer.time_as_text, stats)
        self.writer.commit(rows, self.source, self.path, end)
        self.position = end
        stats.events += len(rows)
        stats.skipped = before + (len(complete) - len(rows))
        stats.per_file[self.path] = stats.per_file.get(self.path, 0) + len(rows)
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
