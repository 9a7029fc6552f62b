"""``jwt-audit verify-log``: check the hash chains of a trail, file or table.

Every stream (one per handler instance: ``chain_id``) is followed in the order
of the trail: JSON-lines files oldest first (rotated files before the live
one), SQL rows by ``id``.  Within a stream each record must hash to its
``hash``, hold the previous record's hash as ``prev_hash`` and come with the
next ``seq``; the first must hold the stream's genesis (``chain.genesis``).  The
first record that breaks this is reported, with what most likely happened:

- *edited*: a record does not match its hash, or a record's hash is not the
  one its successor holds for it (an edit whose hash was recomputed);
- *deleted*: ``seq`` jumps (a record, or the start of the stream, is missing);
- *inserted*: a record after its stream's closing record, a second copy, a
  record without chain fields once chaining has begun, or a damaged one;
- *reordered*: a record reported missing turns up later.

A stream without its closing record is listed as not closed: its writer is
still running, died without closing, or the tail was cut; ``--require-closed``
counts that as tampering.  Records without chain fields before the first
chained one (a trail from before ``chain=True``) are counted, not checked.

Checking reads the input once, as a stream (memory grows with the number of
streams, not of records), and a JSON-lines line is checked from its bytes: a
regular expression on its tail and one digest, no JSON parsing.
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .chain import (
    CLOSING_EVENT,
    ChainKey,
    canonical_json,
    canonical_row,
    digest_function,
    genesis,
    load_key,
)
from .events import clean

_hexlify = binascii.hexlify
_EMPTY_SHA256 = hashlib.sha256()

#: Exit statuses.
INTACT, TAMPERED, UNUSABLE = 0, 1, 2

_CLOSING_LINE = b'{"schema":"jwt-audit/1","event":"' + CLOSING_EVENT.encode() + b'",'
_BACKUP_SUFFIX = re.compile(r"\.(\d{8}T\d{6}Z)(?:-(\d+))?$")


@dataclass
class Finding:
    """The first thing wrong in a stream (or with the trail as a whole)."""

    kind: str  # edited, deleted, inserted, reordered
    chain_id: str | None
    seq: int | None
    where: str
    message: str
    key_suspect: bool = False  # the stream's first record failed: maybe the wrong key
    missing: tuple[int, int] | None = None  # the seqs reported deleted, until seen

    def line(self) -> str:
        """The finding as one line of output."""
        stream = f"stream {self.chain_id} seq {self.seq}, " if self.chain_id else ""
        return f"TAMPERED: {stream}{self.where}: {self.kind}: {self.message}"


@dataclass(slots=True)
class Stream:
    """What is known of one stream so far."""

    chain_id: str
    first_seq: int
    seq: int
    head: bytes
    source: str
    position: int
    closed: bool = False
    finding: Finding | None = None


@dataclass
class Result:
    """The outcome of one check."""

    source: str
    records: int = 0
    unchained_prefix: int = 0
    streams: dict[str, Stream] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    stray: int = 0  # records without chain fields after chaining began

    @property
    def open_streams(self) -> list[Stream]:
        """Streams without their closing record."""
        return [s for s in self.streams.values() if not s.closed]

    def wrong_key(self) -> bool:
        """Whether every stream failed at its first record, as a wrong key makes them."""
        return bool(self.findings) and all(f.key_suspect for f in self.findings)


class Checker:
    """Follows every stream of a trail, record by record, in the trail's order."""

    def __init__(self, key: ChainKey | None, result: Result) -> None:
        self.key = key
        self.digest = digest_function(key)
        self.result = result
        self.streams: dict[bytes, Stream] = {}
        self.source = ""
        self.chained = False

    def where(self, source: str, position: int) -> str:
        """A record's place, for people: ``file line N`` or ``row id N``."""
        return f"{source} {position}"

    def unchained(self, position: int, damaged: bool = False) -> None:
        """A record without (valid) chain fields."""
        result = self.result
        if not self.chained and not damaged:
            result.unchained_prefix += 1
            return
        result.stray += 1
        if result.stray == 1:
            what = (
                "its chain fields are damaged"
                if damaged
                else "a record without chain fields after chaining began"
            )
            result.findings.append(
                Finding("inserted", None, None, self.where(self.source, position), what)
            )

    def link(  # noqa: PLR0917 - one call per record: its fields, as read, no object
        self,
        chain_id: bytes,
        seq: int,
        prev: bytes,
        given: bytes,
        hash_ok: bool,
        position: int,
        closing: bool,
        note: str | None = None,
    ) -> None:
        """One chained record; ``hash_ok``: its content hashes to ``given``.

        ``note`` says why a record whose hash matched is still not ``hash_ok``.
        """
        self.chained = True
        stream = self.streams.get(chain_id)
        if stream is None:
            self._first(
                chain_id,
                seq=seq,
                prev=prev,
                given=given,
                hash_ok=hash_ok,
                position=position,
                closing=closing,
                note=note,
            )
            return
        if stream.finding is not None:
            self._after_finding(stream, seq, given, hash_ok, position, closing)
            return
        if hash_ok and not stream.closed and seq == stream.seq + 1 and prev == stream.head:
            stream.seq = seq
            stream.head = given
            stream.source = self.source
            stream.position = position
            stream.closed = closing
            return
        self._broken(stream, seq=seq, given=given, hash_ok=hash_ok, position=position, note=note)
        stream.closed = stream.closed or closing

    def _first(
        self,
        chain_id: bytes,
        *,
        seq: int,
        prev: bytes,
        given: bytes,
        hash_ok: bool,
        position: int,
        closing: bool,
        note: str | None,
    ) -> None:
        name = chain_id.decode("ascii")
        stream = Stream(name, seq, seq, given, self.source, position, closed=closing)
        self.streams[chain_id] = self.result.streams[name] = stream
        where = self.where(self.source, position)
        if note is not None:
            self._found(stream, Finding("edited", name, seq, where, note))
        elif not hash_ok:
            keyed = "with this chain key" if self.key is not None else "without a chain key"
            self._found(
                stream,
                Finding(
                    "edited",
                    name,
                    seq,
                    where,
                    f"the stream's first record does not match its hash ({keyed})",
                    key_suspect=True,
                ),
            )
        elif seq == 1 and prev.decode("ascii") != genesis(name, self.key):
            self._found(
                stream,
                Finding("edited", name, seq, where, "the first record's prev_hash was altered"),
            )
        elif seq > 1:
            gap = "record 1 is" if seq == 2 else f"records 1-{seq - 1} are"
            self._found(
                stream,
                Finding(
                    "deleted",
                    name,
                    seq,
                    where,
                    f"the stream starts at seq {seq}: {gap} missing "
                    "(deleted, or in older files not given)",
                    missing=(1, seq - 1),
                ),
            )

    def _broken(
        self,
        stream: Stream,
        *,
        seq: int,
        given: bytes,
        hash_ok: bool,
        position: int,
        note: str | None,
    ) -> None:
        where = self.where(self.source, position)
        name = stream.chain_id
        last = self.where(stream.source, stream.position)
        if stream.closed:
            finding = Finding(
                "inserted", name, seq, where, f"a record after the stream's closing record ({last})"
            )
        elif not hash_ok:
            finding = Finding(
                "edited", name, seq, where, note or "the record does not match its hash"
            )
        elif seq == stream.seq + 1:  # prev != head: the record before was replaced
            finding = Finding(
                "edited",
                name,
                stream.seq,
                last,
                f"its hash is not the one seq {seq} ({where}) holds for it: "
                "the record was edited (and its hash recomputed) or replaced",
            )
        elif seq > stream.seq + 1:
            lo, hi = stream.seq + 1, seq - 1
            gap = f"seq {lo}" if lo == hi else f"seq {lo}-{hi}"
            finding = Finding(
                "deleted",
                name,
                seq,
                where,
                f"{gap} missing between {last} and here",
                missing=(lo, hi),
            )
        elif seq == stream.seq and given == stream.head:
            finding = Finding(
                "inserted", name, seq, where, f"a second copy of the record at {last}"
            )
        else:
            finding = Finding(
                "inserted", name, seq, where, f"seq {seq} after seq {stream.seq} ({last})"
            )
        self._found(stream, finding)
        stream.seq = max(stream.seq, seq)
        stream.source = self.source
        stream.position = position

    def _after_finding(  # noqa: PLR0917 - a record's fields, as read
        self, stream: Stream, seq: int, given: bytes, hash_ok: bool, position: int, closing: bool
    ) -> None:
        """Later records of a broken stream: refine the finding, keep the bounds."""
        finding = stream.finding
        assert finding is not None
        if finding.key_suspect and hash_ok:
            finding.key_suspect = False  # a later record verifies: the first was edited
        missing = finding.missing
        if missing is not None and missing[0] <= seq <= missing[1]:
            finding.kind = "reordered"
            finding.message = (
                f"seq {seq} turns up later, at {self.where(self.source, position)}: "
                "records are out of order"
            )
            finding.missing = None
        if seq > stream.seq:
            stream.seq = seq
            stream.head = given
            stream.source = self.source
            stream.position = position
        stream.closed = stream.closed or closing

    def _found(self, stream: Stream, finding: Finding) -> None:
        stream.finding = finding
        self.result.findings.append(finding)


# -- JSON-lines files ------------------------------------------------------------------


def trail_order(paths: Sequence[str]) -> list[str]:
    """The files oldest first: each file's rotated copies by time, the live file last."""

    def key(path: str) -> tuple[str, int, str, int]:
        match = _BACKUP_SUFFIX.search(path)
        if match is None:
            return (path, 1, "", 0)
        return (path[: match.start()], 0, match.group(1), int(match.group(2) or 0))

    return sorted(dict.fromkeys(paths), key=key)


def check_files(paths: Sequence[str], key: ChainKey | None, progress: Progress) -> Result:
    """Check JSON-lines files, given in any order (see ``trail_order``)."""
    ordered = trail_order(paths)
    for path in ordered:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {clean(path, 256)}")
    result = Result(source=", ".join(ordered))
    checker = Checker(key, result)
    progress.start(sum(os.path.getsize(p) for p in ordered))
    for path in ordered:
        checker.source = f"{clean(path, 256)} line"
        _check_file(path, checker, progress)
    progress.done()
    return result


def _check_file(path: str, checker: Checker, progress: Progress) -> None:
    """Check one file's lines; the common case (the next record of a sound stream) inline."""
    digest = checker.digest
    # the digest inline when there is no key (see Chain.seal_lines)
    copy = _EMPTY_SHA256.copy if checker.key is None else None
    streams = checker.streams
    result = checker.result
    source = checker.source
    ticks = progress.ticks
    number = 0
    with open(path, "rb", buffering=1 << 20) as handle:
        for line in handle:
            number += 1
            fields = _fields(line)
            if fields is None:
                checker.unchained(number, damaged=b'"chain_id":' in line)
                continue
            cut, chain_id, seq, prev, given = fields
            if copy is not None:
                state = copy()
                state.update(line[:cut])
                hash_ok = _hexlify(state.digest()) == given
            else:
                hash_ok = digest(line[:cut]) == given
            stream = streams.get(chain_id)
            if (
                hash_ok
                and stream is not None
                and stream.finding is None
                and not stream.closed
                and seq == stream.seq + 1
                and prev == stream.head
            ):
                stream.seq = seq
                stream.head = given
                stream.source = source
                stream.position = number
                stream.closed = line.startswith(_CLOSING_LINE)
            else:
                checker.link(
                    chain_id, seq, prev, given, hash_ok, number, line.startswith(_CLOSING_LINE)
                )
            if not number & 0x3FFF and ticks:
                progress.update(handle.tell())
        progress.file_done(handle.tell())
    result.records += number


def _fields(line: bytes) -> tuple[int, bytes, int, bytes, bytes] | None:
    """``(end of the hashed body, chain_id, seq, prev_hash, hash)`` of a chained line.

    The chain fields are the line's last keys, in the fixed form the sink
    writes (``chain.Chain.seal_lines``), so they are read at fixed offsets
    from its end.  None for a line without them (or with a damaged tail).
    """
    cut = len(line) - (76 if line.endswith(b'"}\n') else 75)
    if not (
        line.startswith(b',"hash":"', cut)
        and line.startswith(b',"prev_hash":"', cut - 79)
        and line.startswith(b'"}', cut + 73)
    ):
        return None
    start = line.rfind(b',"seq":', cut - 106, cut - 79)
    digits = line[start + 7 : cut - 79]
    if (
        start < 46
        or not digits.isdigit()
        or digits[0] == 0x30  # no leading zero
        or not line.startswith(b',"chain_id":"', start - 46)
        or line[start - 1] != 0x22  # '"'
    ):
        return None
    return (
        cut,
        line[start - 33 : start - 1],
        int(digits),
        line[cut - 65 : cut - 1],
        line[cut + 9 : cut + 73],
    )


# -- SQL tables ------------------------------------------------------------------------


def check_database(url: str, table: str | None, key: ChainKey | None, progress: Progress) -> Result:
    """Check a ``SQLAuditHandler`` table, its rows by ``id``, read as a stream."""
    import sqlalchemy as sa  # noqa: PLC0415 - only the SQL check needs it

    from .report import _database_url, database_error, shown  # noqa: PLC0415
    from .schema import CHAIN_COLUMNS, DEFAULT_TABLE, event_tables  # noqa: PLC0415
    from .sinks.sql import create_audit_engine  # noqa: PLC0415

    parsed = _database_url(url)
    name = table or DEFAULT_TABLE
    _, events, _ = event_tables(name)
    try:
        engine = create_audit_engine(parsed)
    except sa.exc.SQLAlchemyError as exc:
        raise ValueError(f"{shown(url)}: {database_error(exc)}") from None
    source = engine.url.render_as_string(hide_password=True)
    try:
        inspector = sa.inspect(engine)
        if not inspector.has_table(name):
            raise ValueError(f"{shown(source)}: no table {shown(name)}")
        present = {column["name"] for column in inspector.get_columns(name)}
        if not set(CHAIN_COLUMNS) <= present:
            raise ValueError(
                f"{shown(source)}: table {shown(name)} has no chain columns: it was never "
                "written with chain=True (a SQLAuditHandler of this version adds the "
                "columns when it opens the table)"
            )
        result = Result(source=f"{source} table {name}")
        checker = Checker(key, result)
        checker.source = "row id"
        with engine.connect() as db:
            top = db.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0
            progress.start(int(top))
            # data as the driver gives it: text (parsed here, so bad JSON is a
            # finding, not a crash) or, from PostgreSQL's JSONB, already parsed
            columns = [c for c in events.columns if c.name != "data"]
            raw = sa.type_coerce(events.c.data, sa.Text()).label("data")
            query = sa.select(*columns, raw).order_by(events.c.id)
            rows = db.execution_options(stream_results=True, yield_per=2000).execute(query)
            for count, row in enumerate(rows, 1):
                _check_row(row._mapping, checker)
                result.records = count
                if not count & 0x3FFF and progress.ticks:
                    progress.update(row.id)
        progress.done()
        return result
    except sa.exc.SQLAlchemyError as exc:
        raise ValueError(f"{shown(source)}: cannot read it: {database_error(exc)}") from None
    finally:
        engine.dispose()


def _check_row(row: Any, checker: Checker) -> None:
    chain_id, seq, prev, given = row["chain_id"], row["seq"], row["prev_hash"], row["hash"]
    if chain_id is None and seq is None and prev is None and given is None:
        checker.unchained(row["id"])
        return
    if not (
        isinstance(chain_id, str)
        and isinstance(seq, int)
        and isinstance(prev, str)
        and isinstance(given, str)
        and seq > 0
    ):
        checker.unchained(row["id"], damaged=True)
        return
    data = row["data"]
    note = None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):
            note = "its data is not JSON"
    when = row["time"]
    time_text = when.isoformat(" ", "microseconds") if hasattr(when, "isoformat") else str(when)
    body = canonical_row(
        chain_id,
        seq,
        prev,
        event_id=str(row["event_id"]),
        level=str(row["level"]),
        time_text=time_text,
        data=canonical_json(data),
    )
    hash_ok = note is None and checker.digest(body) == given.encode("ascii", "replace")
    if hash_ok:
        column = _disagreeing_column(row, data) if isinstance(data, dict) else "data"
        if column is not None:
            hash_ok = False
            note = f"column {column} is not the chained event's value"
    checker.link(
        chain_id.encode("ascii", "replace"),
        seq,
        prev.encode("ascii", "replace"),
        given.encode("ascii", "replace"),
        hash_ok,
        row["id"],
        row["event"] == CLOSING_EVENT,
        note,
    )


def _disagreeing_column(row: Any, data: dict[str, Any]) -> str | None:
    """The first typed column that is not the copy of the event's field it should be."""
    from .schema import STRING_COLUMNS  # noqa: PLC0415
    from .sinks.sql import event_row  # noqa: PLC0415

    expected = event_row(data, row["level"], row["event_id"], None, _no_text)
    for index, (name, _) in enumerate(STRING_COLUMNS, 3):
        if row[name] != expected[index]:
            return name
    status_at = 3 + len(STRING_COLUMNS)
    if row["status"] != expected[status_at]:
        return "status"
    stored, wanted = row["duration_ms"], expected[status_at + 1]
    if (stored is None) != (wanted is None) or (
        stored is not None and not math.isclose(stored, wanted, rel_tol=1e-6, abs_tol=1e-9)
    ):
        return "duration_ms"
    return None


def _no_text(_: Any) -> str:
    return ""


# -- progress and output ---------------------------------------------------------------


class Progress:
    """A progress line on stderr for long runs, when stderr is a terminal."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.ticks = stream is not None
        self.total = 0
        self.base = 0
        self.started = time.monotonic()
        self.shown = False

    def start(self, total: int) -> None:
        """The size of the whole input (bytes, or the highest row id)."""
        self.total = max(total, 1)
        self.started = time.monotonic()

    def update(self, position: int) -> None:
        """Where the check is now (in the current file, or the row id)."""
        if self.stream is None or time.monotonic() - self.started < 1.0:
            return
        share = min(1.0, (self.base + position) / self.total)
        width = 30
        bar = "#" * int(share * width)
        self.stream.write(f"\rverify-log [{bar:<{width}}] {share:6.1%}")
        self.stream.flush()
        self.shown = True

    def file_done(self, size: int) -> None:
        """A file is read: later positions count from its end."""
        self.base += size

    def done(self) -> None:
        """Clear the progress line."""
        if self.stream is not None and self.shown:
            self.stream.write("\r" + " " * 52 + "\r")
            self.stream.flush()
            self.shown = False


def status(result: Result, *, require_closed: bool) -> int:
    """The exit status of a result."""
    if result.wrong_key():
        return UNUSABLE
    if result.findings or (require_closed and result.open_streams):
        return TAMPERED
    return INTACT


def to_dict(result: Result, *, require_closed: bool) -> dict[str, Any]:
    """The result as JSON-ready data (``--json``): findings, and each stream's head."""
    code = status(result, require_closed=require_closed)
    return {
        "result": {INTACT: "intact", TAMPERED: "tampered", UNUSABLE: "wrong_key"}[code],
        "source": result.source,
        "records": result.records,
        "unchained_prefix": result.unchained_prefix,
        "findings": [
            {
                "kind": f.kind,
                "chain_id": f.chain_id,
                "seq": f.seq,
                "where": f.where,
                "message": f.message,
            }
            for f in result.findings
        ],
        "streams": [
            {
                "chain_id": s.chain_id,
                "first_seq": s.first_seq,
                "seq": s.seq,
                "closed": s.closed,
                "head": s.head.decode("ascii", "replace"),
                "last": f"{s.source} {s.position}",
                "intact": s.finding is None,
            }
            for s in result.streams.values()
        ],
    }


def render(result: Result, out: TextIO, *, require_closed: bool, keyed: bool) -> int:
    """Print the result; return the exit status."""
    streams = result.streams
    out.write(
        f"checked {result.records:,} records in {len(streams):,} "
        f"stream{'s' if len(streams) != 1 else ''}: {result.source}\n"
    )
    if result.unchained_prefix:
        out.write(
            f"{result.unchained_prefix:,} records before the first chained one carry no "
            "chain fields (written before chain=True): not checked\n"
        )
    if result.wrong_key():
        hint = (
            "wrong --chain-key-file, or the trail was written without a chain key"
            if keyed
            else "the trail was written with a chain key: give --chain-key-file"
        )
        out.write(f"no stream's records verify: {hint}\n")
        return UNUSABLE
    for finding in result.findings:
        out.write(finding.line() + "\n")
    if result.stray > 1:
        out.write(f"  ({result.stray:,} records in all without valid chain fields)\n")
    open_streams = result.open_streams
    for stream in streams.values():
        state = "closed" if stream.closed else "NOT CLOSED"
        last = f"last at {stream.source} {stream.position}"
        broken = " (broken, see above)" if stream.finding else ""
        out.write(
            f"stream {stream.chain_id}: seq {stream.first_seq}-{stream.seq}, {state}, "
            f"head {stream.head.decode('ascii', 'replace')}, {last}{broken}\n"
        )
    if not streams:
        out.write("no chained records found\n")
    if result.findings:
        out.write("result: TAMPERED\n")
        return TAMPERED
    if open_streams:
        note = (
            f"{len(open_streams)} stream{'s' if len(open_streams) != 1 else ''} not closed: "
            "its writer is still running or stopped without closing, or its tail was cut"
        )
        if require_closed:
            out.write(f"result: TAMPERED ({note})\n")
            return TAMPERED
        out.write(f"result: intact; {note}\n")
        return INTACT
    out.write("result: intact\n")
    return INTACT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jwt-audit verify-log``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="SQLAlchemy URL of a SQLAuditHandler store")
    source.add_argument(
        "--file", nargs="+", action="extend", help="JSON-lines files (rotated ones too)"
    )
    parser.add_argument("--chain-key-file", help="file holding the HMAC chain key")
    parser.add_argument("--table", help="table name (default jwt_audit_events)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--require-closed",
        action="store_true",
        help="a stream without its closing record counts as tampered (archived trails)",
    )


def run(args: argparse.Namespace, out: TextIO, err: TextIO | None = None) -> int:
    """``jwt-audit verify-log``: 0 intact, 1 tampered, 2 usage or read error.

    A bad key file, a missing file or table, or a table without chain columns
    raise ``ConfigurationError``, ``OSError`` or ``ValueError`` with a one-line
    message, which ``cli.main`` prints with exit status 2.
    """
    key = load_key(chain_key_file=args.chain_key_file) if args.chain_key_file else None
    error_stream = sys.stderr if err is None else err
    progress = Progress(error_stream if error_stream.isatty() else None)
    if args.db:
        result = check_database(args.db, args.table, key, progress)
    else:
        result = check_files(args.file, key, progress)
    if args.json:
        data = to_dict(result, require_closed=args.require_closed)
        out.write(json.dumps(data, indent=2, ensure_ascii=True) + "\n")
        return status(result, require_closed=args.require_closed)
    return render(result, out, require_closed=args.require_closed, keyed=key is not None)
