"""The audit report: what ``jwt-audit report`` computes and draws.

From a SQL store (the ``SQLAuditHandler`` table; grouped by the database, using
its indexes) or from JSON-lines files (``JSONLinesHandler`` output, rotated files,
a spill file; counted in Python), or both (``merge``): totals by outcome and
event, what was refused by reason, client IP and subject (``(anonymous)`` for a
request without a verified subject), the paths most often refused, the alerts
of abuse detection by reason and key, the shared-state store's losses, and a
histogram whose buckets widen with the span (an hour, ... a day, a week), so
that it stays about ``MAX_ROWS`` rows.  "Refused" means any outcome other than
``allowed`` (``denied``, ``would_deny`` in report-only mode, failed logins) of
an event about a request or a login: alerts, key and state events and
websocket disconnects (``NOT_REQUESTS``) are counted apart.

The input is not trusted: any unauthenticated client chooses the path of its
401s, and a store or file may be damaged or forged.  So a bad record (a line
that is not JSON, nested too deep or longer than ``MAX_LINE``; an event or a
row without a valid time) is skipped and counted, never fatal; everything
printed that came from the data is escaped and capped at ``MAX_SHOWN``
characters; and memory stays bounded whatever the number of distinct values:
files are read line by line, each dimension is counted by a ``TopK`` of fixed
capacity, the histogram keeps the latest ``HOUR_CAPACITY`` hours, and every SQL
query has a ``LIMIT``.
"""

from __future__ import annotations

import datetime
import heapq
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from .chain import CLOSING_EVENT
from .events import clean

#: Distinct values counted per dimension (path, client IP, subject, ...).  Below
#: it, counts are exact; past it, they are Space-Saving estimates (upper bounds).
COUNTER_CAPACITY = 1000
#: Hours of the histogram kept (the latest); events in older hours are only counted.
HOUR_CAPACITY = 24 * 92
#: Longest line of a JSON-lines file that is parsed; a longer one is a bad record.
MAX_LINE = 64 * 1024
#: Longest value printed (paths, IPs, subjects, reasons); longer ones end with "…".
MAX_SHOWN = 256
#: Rows of the outcome and event totals.
MAX_TOTALS = 100
#: Most rows the histogram draws: its buckets widen to keep within it.
MAX_ROWS = 48
#: Events that are no request's outcome: never counted as refused, nor in the request tables.
NOT_REQUESTS = ("alert", "state_event", "key_event", "disconnect")
#: How ``refused_by_subject`` shows a refusal without a verified subject.
ANONYMOUS = "(anonymous)"
#: The event of abuse detection's alerts, and of the shared store's losses (contract §9).
ALERT, STATE_EVENT = "alert", "state_event"
#: The field that names what an alert is about, by its reason (else the fingerprint).
ALERT_KEYS = {"denial_burst_ip": "client_ip", "denial_burst_subject": "subject"}

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HOUR_TEXT = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2})$")
_HOUR = datetime.timedelta(hours=1)
_TABLES = (
    "refused_by_reason",
    "refused_by_client_ip",
    "refused_by_subject",
    "refused_paths",
    "top_client_ips",
    "top_subjects",
    "alerts_by_reason",
    "alert_keys",
)


def parse_since(text: str | None, now: datetime.datetime | None = None) -> datetime.datetime | None:
    """``"24h"``, ``"30m"``, ``"7d"``, ``"2w"`` → a naive UTC datetime; ``"all"``/None → None.

    A value that cannot be read, or reaches back before the year 1, is a
    ``ValueError`` whose message is one line for the user.
    """
    if text is None or text.strip().lower() in ("", "all"):
        return None
    match = _SINCE.match(text)
    if match is None:
        raise ValueError(
            f"--since {clean(text, 64)!r}: use a number and s, m, h, d or w (e.g. 24h, 3d),"
            " or all for every event"
        )
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    try:
        return (now or utcnow()) - datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(
            f"--since {clean(text.strip(), 64)} reaches back before the year 1: use --since all"
        ) from None


def utcnow() -> datetime.datetime:
    """Now, as a naive UTC datetime (how the SQL store keeps times)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def shown(value: str) -> str:
    """A value from the data as it may be printed: control characters escaped, capped."""
    return clean(value, MAX_SHOWN)


@dataclass
class Report:
    """The figures of one report; ``to_dict()`` is what ``--json`` prints.

    Values are kept as read (capped to ``MAX_SHOWN + 1`` characters); ``render``
    and ``to_dict`` escape them.  ``approximate`` names the tables whose counts
    are upper bounds, because more distinct values than ``COUNTER_CAPACITY``
    were seen.  ``events_before_histogram`` counts the events of hours older
    than the ``HOUR_CAPACITY`` hours drawn.  ``alert_keys`` holds
    ``"<reason> <key>"`` values (a reason has no space); ``state_events``
    counts the ``state_event`` outcomes (``store_lost``, ``store_restored``);
    ``notes`` are lines for the reader (a spill file left out, ...).
    """

    source: str
    since: str | None
    total: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    by_event: dict[str, int] = field(default_factory=dict)
    refused_by_reason: list[tuple[str, int]] = field(default_factory=list)
    refused_by_client_ip: list[tuple[str, int]] = field(default_factory=list)
    refused_by_subject: list[tuple[str, int]] = field(default_factory=list)
    refused_paths: list[tuple[str, int]] = field(default_factory=list)
    top_client_ips: list[tuple[str, int]] = field(default_factory=list)
    top_subjects: list[tuple[str, int]] = field(default_factory=list)
    alerts_by_reason: list[tuple[str, int]] = field(default_factory=list)
    alert_keys: list[tuple[str, int]] = field(default_factory=list)
    state_events: dict[str, int] = field(default_factory=dict)
    hourly: list[tuple[str, int, int]] = field(default_factory=list)
    events_before_histogram: int = 0
    skipped_records: int = 0
    approximate: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, every value from the data escaped and capped."""
        data = asdict(self)
        data["source"] = shown(self.source)
        data["by_outcome"] = _shown_totals(self.by_outcome)
        data["by_event"] = _shown_totals(self.by_event)
        data["state_events"] = _shown_totals(self.state_events)
        for key in _TABLES:
            data[key] = [{"value": shown(value), "count": count} for value, count in data[key]]
        data["alert_keys"] = [
            {"reason": shown(reason), "key": shown(key), "count": count}
            for (reason, key), count in ((_split_alert_key(v), n) for v, n in self.alert_keys)
        ]
        data["hourly"] = [
            {"hour": hour, "events": total, "refused": refused}
            for hour, total, refused in self.hourly
        ]
        return data


def _shown_totals(totals: Mapping[str, int]) -> dict[str, int]:
    """Totals keyed by their printed value (two values may print alike: add them)."""
    result: dict[str, int] = {}
    for value, count in totals.items():
        key = shown(value)
        result[key] = result.get(key, 0) + count
    return result


def _split_alert_key(value: str) -> tuple[str, str]:
    reason, _, key = value.partition(" ")
    return reason, key


def _key(value: object) -> str:
    """A value as counted: text, no longer than needed to show it (and that it was cut)."""
    text = value if isinstance(value, str) else str(value)
    return text[: MAX_SHOWN + 1]


def _hour_key(hour: datetime.datetime) -> str:
    # not strftime("%Y"): it gives "1", not "0001", for the year 1 on glibc
    return f"{hour.year:04d}-{hour.month:02d}-{hour.day:02d}T{hour.hour:02d}"


def _fill_hours(counts: Mapping[datetime.datetime, Sequence[int]]) -> list[tuple[str, int, int]]:
    """Every hour from the first to the last with events, empty ones included.

    Over more than 31 days (or the ends of the calendar), only the hours with events.
    """
    if not counts:
        return []
    hours = sorted(counts)
    first, last = hours[0], hours[-1]
    if last - first <= datetime.timedelta(days=31):
        hours = [first + i * _HOUR for i in range((last - first) // _HOUR + 1)]
    rows = []
    for hour in hours:
        total, refused = counts.get(hour, (0, 0))
        rows.append((_hour_key(hour), total, refused))
    return rows


# -- bounded counting --------------------------------------------------------------


class TopK:
    """The most frequent values of a stream, counted in bounded memory.

    Space-Saving (Metwally, Agrawal and El Abbadi, 2005): at most ``capacity``
    counters.  While no more distinct values than that have been seen, every
    count is exact.  Past it, a new value takes over the counter of a least
    counted one and adds one to it (``overflowed`` turns true): a count is then
    an upper bound, too high by at most N / capacity (N values added), and any
    value seen more than N / capacity times is still held.  Each ``add`` is
    O(1): counters are grouped by count, and the least count is tracked.
    """

    def __init__(self, capacity: int = COUNTER_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a TopK needs a capacity of at least 1")
        self.capacity = capacity
        self.overflowed = False
        self._counts: dict[str, int] = {}
        self._by_count: dict[int, dict[str, None]] = {}  # count -> its values, oldest first
        self._least = 0

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, value: str) -> None:
        """Count ``value`` once."""
        old = self._counts.get(value)
        if old is None:
            old = self._make_room()
        else:
            self._unlink(value, old)
        new = old + 1
        self._counts[value] = new
        self._by_count.setdefault(new, {})[value] = None
        if new == 1 or (old == self._least and old not in self._by_count):
            self._least = new

    def most_common(self, limit: int) -> list[tuple[str, int]]:
        """The ``limit`` highest counts, ties by value."""
        return heapq.nsmallest(limit, self._counts.items(), key=lambda item: (-item[1], item[0]))

    def _make_room(self) -> int:
        """0 for a new value, or the count it inherits from the value it evicts."""
        if len(self._counts) < self.capacity:
            return 0
        self.overflowed = True
        victim = next(iter(self._by_count[self._least]))
        self._unlink(victim, self._least)
        del self._counts[victim]
        return self._least

    def _unlink(self, value: str, count: int) -> None:
        values = self._by_count[count]
        del values[value]
        if not values:
            del self._by_count[count]


class _Hours:
    """Events and refusals per hour, for the latest ``capacity`` hours seen."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: dict[datetime.datetime, list[int]] = {}
        self.earlier = 0  # events of hours dropped, or older than those dropped
        self._heap: list[datetime.datetime] = []
        self._floor: datetime.datetime | None = None  # the latest hour dropped

    def add(self, when: datetime.datetime, refused: bool) -> None:
        hour = when.replace(minute=0, second=0, microsecond=0)
        if hour not in self.counts and not self._admit(hour):
            self.earlier += 1
            return
        counts = self.counts[hour]
        counts[0] += 1
        counts[1] += refused

    def _admit(self, hour: datetime.datetime) -> bool:
        """Make a row for a new hour, dropping the oldest past the capacity."""
        if self._floor is not None and hour <= self._floor:
            return False
        self.counts[hour] = [0, 0]
        heapq.heappush(self._heap, hour)
        if len(self.counts) <= self.capacity:
            return True
        oldest = heapq.heappop(self._heap)
        self.earlier += self.counts.pop(oldest)[0]
        self._floor = oldest
        return oldest != hour


# -- JSON-lines files --------------------------------------------------------------


class _BadRecordError(Exception):
    """A line or row the report skips and counts."""


def _event_time(text: object) -> datetime.datetime:
    """The naive UTC time of an event's ``time`` (RFC 3339, ``Z`` suffix)."""
    if not isinstance(text, str) or not text.endswith("Z"):
        raise _BadRecordError
    try:
        when = datetime.datetime.fromisoformat(text[:-1])
    except ValueError:
        raise _BadRecordError from None
    if when.tzinfo is not None:  # "...+01:00Z": an offset and Z at once
        raise _BadRecordError
    return when


def _parse(line: str | None) -> tuple[dict[str, Any], datetime.datetime] | None:
    """An audit event and its time; None for a blank line or another program's JSON.

    ``None`` as the line stands for one longer than ``MAX_LINE`` (not read).
    """
    if line is None or len(line) > MAX_LINE:
        raise _BadRecordError
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        raise _BadRecordError from None
    if not isinstance(event, dict) or "outcome" not in event or "event" not in event:
        return None
    if not isinstance(event["outcome"], str) or not isinstance(event["event"], str):
        raise _BadRecordError
    return event, _event_time(event.get("time"))


class Tally:
    """The counts of a report of JSON lines, one event at a time, in bounded memory.

    Each dimension is a ``TopK`` of ``capacity`` counters; the histogram keeps
    the latest ``hour_capacity`` hours.  ``feed()`` takes lines; ``report()``
    gives the ``Report``.
    """

    def __init__(
        self,
        since: datetime.datetime | None = None,
        capacity: int = COUNTER_CAPACITY,
        hour_capacity: int = HOUR_CAPACITY,
    ) -> None:
        self.since = since
        self.total = 0
        self.skipped = 0
        self.read = 0  # audit events read, in the window or not
        names = ("by_outcome", "by_event", "state_events", *_TABLES)
        self.counters: dict[str, TopK] = {name: TopK(capacity) for name in names}
        self.hours = _Hours(hour_capacity)

    def feed(self, lines: Iterable[str | None]) -> Tally:
        """Count every line (``None``: a line too long to read); returns ``self``."""
        for line in lines:
            try:
                parsed = _parse(line)
            except _BadRecordError:
                self.skipped += 1
                continue
            if parsed is not None:
                self.read += 1
                self.add(*parsed)
        return self

    def feed_file(self, path: str) -> Tally:
        """Count the lines of a JSON-lines file; a file with no audit event is refused.

        A SQLite database, a compressed file or any file of which not one line
        is an audit event (and some are unreadable) is a ``ValueError``
        saying so, rather than a report of 0 events.
        """
        with open(path, "rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
        if head == _SQLITE_MAGIC:
            raise ValueError(
                f"{shown(path)} is a SQLite database, not JSON lines:"
                f" use --db sqlite:///{shown(os.path.abspath(path))}"
            )
        read, skipped = self.read, self.skipped
        self.feed(read_lines(path))
        if self.read == read and self.skipped > skipped:
            raise ValueError(
                f"{shown(path)}: none of its {self.skipped - skipped} lines is an audit event"
                " in JSON: is it a JSON-lines audit file (not compressed)?"
            )
        return self

    def add(self, event: Mapping[str, Any], when: datetime.datetime) -> None:
        """Count one audit event that happened at ``when`` (naive UTC)."""
        if self.since is not None and when < self.since:
            return
        kind, outcome = event["event"], event["outcome"]
        if kind == CLOSING_EVENT:  # the end of a hash chain (chain=True), not an event
            return
        refused = outcome != "allowed" and kind not in NOT_REQUESTS
        self.total += 1
        self.hours.add(when, refused)
        counters = self.counters
        counters["by_outcome"].add(_key(outcome))
        counters["by_event"].add(_key(kind))
        if kind in NOT_REQUESTS:
            if kind in (ALERT, STATE_EVENT):
                self._add_detection(event)
            return
        ip, subject, path = event.get("client_ip"), event.get("subject"), event.get("path")
        for value, everyone, refusals in (
            (ip, "top_client_ips", "refused_by_client_ip"),
            (subject, "top_subjects", "refused_by_subject"),
            (path, None, "refused_paths"),
        ):
            if not value:
                if refused and refusals == "refused_by_subject":
                    counters[refusals].add(ANONYMOUS)
                continue
            if everyone:
                counters[everyone].add(_key(value))
            if refused:
                counters[refusals].add(_key(value))
        if refused:
            counters["refused_by_reason"].add(_key(event.get("reason")))

    def _add_detection(self, event: Mapping[str, Any]) -> None:
        """Count an alert by reason and key, or a state event by outcome."""
        if event["event"] == STATE_EVENT:
            self.counters["state_events"].add(_key(event["outcome"]))
            return
        reason = _key(event.get("reason"))
        key = event.get(ALERT_KEYS.get(reason, "token_fingerprint"))
        self.counters["alerts_by_reason"].add(reason)
        self.counters["alert_keys"].add(_key(f"{reason} {_key(key or '-')}"))

    def report(self, source: str, limit: int = 10) -> Report:
        """The ``Report`` of what was counted, ``limit`` rows per table."""
        counters = self.counters
        report = Report(source=source, since=_iso(self.since), total=self.total)
        report.by_outcome = dict(counters["by_outcome"].most_common(MAX_TOTALS))
        report.by_event = dict(counters["by_event"].most_common(MAX_TOTALS))
        report.state_events = dict(counters["state_events"].most_common(MAX_TOTALS))
        for name in _TABLES:
            setattr(report, name, counters[name].most_common(limit))
        report.hourly = _fill_hours(self.hours.counts)
        report.events_before_histogram = self.hours.earlier
        report.skipped_records = self.skipped
        report.approximate = [name for name, c in counters.items() if c.overflowed]
        return report


def report_from_lines(
    lines: Iterable[str | None],
    source: str,
    since: datetime.datetime | None = None,
    limit: int = 10,
) -> Report:
    """The report of JSON lines (non-audit lines are skipped, bad ones counted)."""
    return Tally(since).feed(lines).report(source, limit)


def read_lines(path: str, limit: int = MAX_LINE) -> Iterator[str | None]:
    """The lines of a file, decoded leniently; ``None`` for each longer than ``limit`` bytes.

    An over-long line is skipped in ``limit``-byte steps, never held whole.
    """
    with open(path, "rb") as handle:
        while line := handle.readline(limit + 1):
            if len(line) > limit and not line.endswith(b"\n"):
                while (rest := handle.readline(limit)) and not rest.endswith(b"\n"):
                    pass
                yield None
                continue
            yield line.decode("utf-8", errors="replace")


def report_from_files(
    paths: Sequence[str], since: datetime.datetime | None = None, limit: int = 10
) -> Report:
    """The report of one or more JSON-lines files, read in order, line by line.

    A file that holds no audit event at all is a ``ValueError`` (``Tally.feed_file``).
    """
    tally = Tally(since)
    for path in paths:
        tally.feed_file(path)
    return tally.report(", ".join(paths), limit)


# -- several sources ---------------------------------------------------------------------


def report_from_sources(
    db: str | None,
    files: Sequence[str] = (),
    since: datetime.datetime | None = None,
    limit: int = 10,
    table: str | None = None,
) -> Report:
    """The report of a SQL store and JSON-lines files together, as if one.

    A SQLite store's spill file (``<database>.spill.jsonl``, where
    ``SQLAuditHandler`` puts what the database could not take) is counted with
    it.  A server's spill file lies on the machine that wrote it; a note says
    so when the default one is here (give it with ``--file`` to count it).
    Events are only ever in one of a store and its spill, so counts add up.
    """
    notes: list[str] = []
    spills: list[str] = []
    if db is not None:
        spill, local = _spill_file(db)
        if spill is not None and local and spill not in files:
            spills.append(spill)
            notes.append(f"the store's spill file counted too: {shown(spill)}")
        elif spill is not None and not local:
            notes.append(f"a spill file is in {shown(spill)}: if it is this store's, add --file")
    parts = []
    wide = COUNTER_CAPACITY if db is not None and (files or spills) else limit
    if db is not None:
        parts.append(report_from_database(db, since, wide, table))
    if files or spills:
        tally = Tally(since)
        for path in files:
            tally.feed_file(path)
        for path in spills:  # a damaged spill file is counted as bad records, never fatal
            tally.feed(read_lines(path))
        parts.append(tally.report(", ".join([*files, *spills]), wide))
    result = parts[0] if len(parts) == 1 else merge(parts, limit)
    result.notes.extend(notes)
    return result


def _spill_file(url: str) -> tuple[str | None, bool]:
    """The spill file of a SQL store if it exists here, and whether it is the store's own.

    A SQLite store's spill file is beside it; for a server the default spill
    file (``$XDG_STATE_HOME/jwt-audit/``) may be another store's.
    """
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    from .sinks._private import SPILL_NAME, default_spill_dir  # noqa: PLC0415

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - report_from_database says what is wrong with it
        return None, False
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite":
        if database in ("", ":memory:"):
            return None, False
        path = os.path.abspath(database) + ".spill.jsonl"
        return (path if os.path.isfile(path) else None), True
    path = os.path.join(default_spill_dir(), SPILL_NAME)
    return (path if os.path.isfile(path) and os.path.getsize(path) else None), False


def merge(reports: Sequence[Report], limit: int = 10) -> Report:
    """One report of several sources (each made with rows enough: ``COUNTER_CAPACITY``).

    Counts add up; a table cut short in one source (as many rows as it could
    hold) is marked approximate.
    """
    result = Report(
        source=" + ".join(r.source for r in reports),
        since=reports[0].since,
        total=sum(r.total for r in reports),
        events_before_histogram=sum(r.events_before_histogram for r in reports),
        skipped_records=sum(r.skipped_records for r in reports),
    )
    for name in ("by_outcome", "by_event", "state_events"):
        summed = _summed(item for r in reports for item in getattr(r, name).items())
        setattr(result, name, dict(summed[:MAX_TOTALS]))
    approximate = {name for r in reports for name in r.approximate}
    for name in _TABLES:
        setattr(result, name, _summed(row for r in reports for row in getattr(r, name))[:limit])
        if any(len(getattr(r, name)) >= COUNTER_CAPACITY for r in reports):
            approximate.add(name)
    result.approximate = sorted(approximate)
    hours: dict[datetime.datetime, list[int]] = {}
    for r in reports:
        for text, total, refused in r.hourly:
            moment = _parse_hour(text)
            if moment is not None:
                counts = hours.setdefault(moment, [0, 0])
                counts[0] += total
                counts[1] += refused
    result.hourly = _fill_hours(hours)
    result.notes = [note for r in reports for note in r.notes]
    return result


def _summed(rows: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    totals: dict[str, int] = {}
    for value, count in rows:
        totals[value] = totals.get(value, 0) + count
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))


# -- SQL ---------------------------------------------------------------------------------

#: The columns the report reads.
_COLUMNS = ("time", "event", "outcome", "reason", "client_ip", "subject", "path")


def report_from_database(
    url: str,
    since: datetime.datetime | None = None,
    limit: int = 10,
    table: str | None = None,
) -> Report:
    """The report of a ``SQLAuditHandler`` table, grouped by the database.

    A bad URL, a missing SQLite file, a file that is not a database, a missing
    table or column, or a failing database is a ``ValueError`` (or
    ``FileNotFoundError``) with a one-line message.  Rows without a valid time
    are skipped and counted; every query has a ``LIMIT``.
    """
    import sqlalchemy as sa  # noqa: PLC0415 - only the SQL report needs it

    from .schema import DEFAULT_TABLE, event_tables  # noqa: PLC0415
    from .sinks.sql import create_audit_engine  # noqa: PLC0415

    parsed = _database_url(url)
    source = parsed.render_as_string(hide_password=True)
    _, events, _ = event_tables(table or DEFAULT_TABLE)
    try:
        engine = create_audit_engine(parsed)
    except sa.exc.SQLAlchemyError as exc:
        raise ValueError(f"{shown(source)}: {database_error(exc)}") from None
    try:
        source = engine.url.render_as_string(hide_password=True)
        with engine.connect() as db:
            _check_table(db, events.name, source)
            report = Report(source=source, since=_iso(since))
            return _count_rows(db, events, since, limit, report)
    except sa.exc.SQLAlchemyError as exc:
        raise ValueError(f"{shown(source)}: cannot read it: {database_error(exc)}") from None
    finally:
        engine.dispose()


def _database_url(url: str) -> Any:
    """The parsed URL; a SQLite file must exist (a typo must not create an empty store)."""
    import sqlalchemy as sa  # noqa: PLC0415
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError(
            f"not a database URL: {shown(url)!r} (e.g. sqlite:///audit.db or postgresql://host/db)"
        ) from None
    database = parsed.database or ""
    sqlite_file = parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if sqlite_file and not os.path.exists(database):
        # a typo must not report "0 events", nor create an empty store
        raise FileNotFoundError(f"no such database file: {shown(database)}")
    return parsed


def database_error(exc: Exception) -> str:
    """The first line of the driver's message (not SQLAlchemy's statement and link)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return shown(lines[0] if lines else type(cause).__name__)


def _check_table(db: Any, name: str, source: str) -> None:
    """A ``ValueError`` unless the table exists with every column the report reads."""
    import sqlalchemy as sa  # noqa: PLC0415

    inspector = sa.inspect(db)
    if not inspector.has_table(name):
        raise ValueError(f"{shown(source)} has no table {name!r}: is it a jwt-audit store?")
    present = {str(column["name"]).lower() for column in inspector.get_columns(name)}
    missing = [column for column in _COLUMNS if column not in present]
    if missing:
        raise ValueError(
            f"{shown(source)}: the table {name!r} has no column {', '.join(missing)}:"
            " is it a jwt-audit store?"
        )


def _time_checks(dialect: str, time: Any, window: Sequence[Any]) -> tuple[Any, Any, Any]:
    """The hour of a row, "its time is valid", and "it is a bad row", as SQL.

    A valid time lies within the years 1 to 9999 (not a MariaDB zero date nor a
    PostgreSQL infinity) and, in SQLite, where a column holds any type, is text
    SQLite reads as a date (an integer sorts before any text, a blob after).
    Bad rows are counted across the table, as a time that cannot be read cannot
    be placed in the window; only SQLite's unreadable texts are counted within
    it, so that the count too can use the index on ``time``.
    """
    import sqlalchemy as sa  # noqa: PLC0415

    low, high = datetime.datetime.min, datetime.datetime.max
    in_range = sa.and_(time >= low, time <= high)
    out_of_range = sa.or_(time.is_(None), time < low, time > high)
    if dialect == "postgresql":
        return sa.func.to_char(time, 'YYYY-MM-DD"T"HH24'), in_range, out_of_range
    if dialect in ("mysql", "mariadb"):
        return sa.func.date_format(time, "%Y-%m-%dT%H"), in_range, out_of_range
    hour = sa.func.strftime("%Y-%m-%dT%H", time)
    unreadable = sa.and_(*window, in_range, hour.is_(None))
    return hour, sa.and_(in_range, hour.is_not(None)), sa.or_(out_of_range, unreadable)


def _count_rows(
    db: Any, events: Any, since: datetime.datetime | None, limit: int, report: Report
) -> Report:
    """Fill ``report`` from the valid rows of the window."""
    import sqlalchemy as sa  # noqa: PLC0415

    c = events.c
    window = [c.time >= since] if since is not None else []
    hour, valid, bad = _time_checks(db.dialect.name, c.time, window)
    rows = [*window, valid, c.event != CLOSING_EVENT]  # chain ends are not events
    refused = sa.and_(c.outcome != "allowed", c.event.not_in(NOT_REQUESTS))
    count = sa.select(sa.func.count()).select_from(events)
    report.skipped_records = int(db.scalar(count.where(bad)) or 0)
    report.total = int(db.scalar(count.where(*rows)) or 0)
    report.by_outcome = dict(_top_values(db, c.outcome, rows, MAX_TOTALS))
    report.by_event = dict(_top_values(db, c.event, rows, MAX_TOTALS))
    state = [c.event == STATE_EVENT]
    report.state_events = dict(_top_values(db, c.outcome, [*rows, *state], MAX_TOTALS))
    requests = [*rows, c.event.not_in(NOT_REQUESTS)]
    alerts = [*rows, c.event == ALERT]
    subject = sa.func.coalesce(sa.func.nullif(c.subject, ""), ANONYMOUS)
    key = sa.case(
        *((c.reason == reason, c[column]) for reason, column in ALERT_KEYS.items()),
        else_=c.token_fingerprint,
    )
    alert_key = sa.func.coalesce(c.reason, "None") + " " + sa.func.coalesce(key, "-")
    for name, column, where in (
        ("refused_by_reason", c.reason, [*requests, refused]),
        ("refused_by_client_ip", c.client_ip, [*requests, refused, c.client_ip.is_not(None)]),
        ("refused_by_subject", subject, [*requests, refused]),
        ("refused_paths", c.path, [*requests, refused, c.path.is_not(None)]),
        ("top_client_ips", c.client_ip, [*requests, c.client_ip.is_not(None)]),
        ("top_subjects", c.subject, [*requests, c.subject.is_not(None)]),
        ("alerts_by_reason", c.reason, alerts),
        ("alert_keys", alert_key, alerts),
    ):
        setattr(report, name, _top_values(db, column, where, limit))
    _hourly(db, hour, refused, rows, report)
    return report


def _top_values(db: Any, column: Any, where: Sequence[Any], limit: int) -> list[tuple[str, int]]:
    """The ``limit`` most frequent values of ``column``, each cut to what can be shown."""
    import sqlalchemy as sa  # noqa: PLC0415

    count = sa.func.count()
    query = (
        sa.select(sa.func.substr(column, 1, MAX_SHOWN + 1), count)
        .where(*where)
        .group_by(column)
        .order_by(count.desc(), column)
        .limit(limit)
    )
    return [(_key(value), int(n)) for value, n in db.execute(query)]


def _hourly(db: Any, hour: Any, refused: Any, where: Sequence[Any], report: Report) -> None:
    """The histogram of the latest ``HOUR_CAPACITY`` hours with events."""
    import sqlalchemy as sa  # noqa: PLC0415

    query = (
        sa.select(hour, sa.func.count(), sa.func.sum(sa.case((refused, 1), else_=0)))
        .where(*where)
        .group_by(hour)
        .order_by(hour.desc())
        .limit(HOUR_CAPACITY)
    )
    counts: dict[datetime.datetime, tuple[int, int]] = {}
    for text, n, refusals in db.execute(query):
        moment = _parse_hour(text)
        if moment is None:  # the time checks should leave none: skip, never fail
            report.skipped_records += int(n)
            report.total -= int(n)
            continue
        counts[moment] = (int(n), int(refusals or 0))
    report.hourly = _fill_hours(counts)
    report.events_before_histogram = report.total - sum(n for n, _ in counts.values())


def _parse_hour(text: object) -> datetime.datetime | None:
    match = _HOUR_TEXT.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    year, month, day, hour = (int(part) for part in match.groups())
    try:
        return datetime.datetime(year, month, day, hour)
    except ValueError:
        return None


def _iso(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else f"{_hour_key(moment)}:{moment:%M:%S}Z"


# -- drawing ---------------------------------------------------------------------------------


def render(report: Report, out: TextIO, width: int = 40) -> None:
    """The report as text for a terminal; every value from the data escaped and capped."""
    since = f" since {report.since}" if report.since else ""
    out.write(f"Audit report: {shown(report.source)}{since}\n")
    out.write(f"{report.total} events")
    if report.by_outcome:
        out.write(": " + _joined(report.by_outcome))
    out.write("\n")
    if report.skipped_records:
        plural = "" if report.skipped_records == 1 else "s"
        out.write(
            f"({report.skipped_records} bad record{plural} skipped: unreadable, too long,"
            " or without a valid time)\n"
        )
    if report.by_event:
        out.write("by event: " + _joined(report.by_event) + "\n")
    if report.state_events:
        out.write("shared state store: " + _joined(report.state_events) + "\n")
    for note in report.notes:
        out.write(f"({note})\n")
    _render_tables(report, out)
    _render_alerts(report, out)
    _render_hours(report, out, width)


def _joined(totals: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {value}" for value, n in _shown_totals(totals).items())


def _render_tables(report: Report, out: TextIO) -> None:
    titles = {
        "refused_by_reason": "Refused, by reason",
        "refused_by_client_ip": "Refused, by client IP",
        "refused_by_subject": "Refused, by subject",
        "refused_paths": "Most refused paths",
        "top_client_ips": "Top client IPs (all events)",
        "top_subjects": "Top subjects (all events)",
    }
    for name, title in titles.items():
        rows: list[tuple[str, int]] = getattr(report, name)
        if not rows:
            continue
        note = ""
        if name in report.approximate:
            note = f" (over {COUNTER_CAPACITY} distinct values: counts are upper bounds)"
        out.write(f"\n{title}{note}\n")
        for value, n in rows:
            out.write(f"  {n:>8}  {shown(value)}\n")


def _render_alerts(report: Report, out: TextIO) -> None:
    if not report.alerts_by_reason:
        return
    out.write("\nAlerts (abuse detection), by reason\n")
    for value, n in report.alerts_by_reason:
        out.write(f"  {n:>8}  {shown(value)}\n")
    out.write("Alerts, top keys (client IP, subject or token fingerprint)\n")
    for value, n in report.alert_keys:
        reason, key = _split_alert_key(value)
        out.write(f"  {n:>8}  {shown(key)}  ({shown(reason)})\n")


#: Bucket sizes of the histogram, in hours: the first that keeps within ``MAX_ROWS``.
_BUCKET_HOURS = (1, 2, 3, 4, 6, 12, 24, 48, 168, 336)


def histogram(
    hourly: Sequence[tuple[str, int, int]], max_rows: int = MAX_ROWS
) -> tuple[int, list[tuple[str, int, int]]]:
    """The hourly counts in buckets wide enough for at most ``max_rows`` rows.

    Returns the bucket size in hours (1, 2, 3, 4, 6, 12, a day, two, 7, 14,
    then whole days) and a row per bucket from the first to the last with
    events, empty ones included: (label, events, refused).  Buckets of hours
    start at midnight; buckets of days at the first day with events.
    """
    counts: dict[datetime.datetime, tuple[int, int]] = {}
    for text, total, refused in hourly:
        moment = _parse_hour(text)
        if moment is not None:
            counts[moment] = (total, refused)
    if not counts:
        return 1, []
    first, last = min(counts), max(counts)
    origin = first.replace(hour=0)

    def index(moment: datetime.datetime, size: int) -> int:
        return (moment - origin) // (size * _HOUR)

    span_days = (last - first) // datetime.timedelta(days=1) + 1
    sizes = (*_BUCKET_HOURS, 24 * -(-span_days // (max_rows - 1)))
    size = next(n for n in sizes if index(last, n) - index(first, n) < max_rows)
    buckets: dict[int, list[int]] = {}
    for moment, (total, refused) in counts.items():
        bucket = buckets.setdefault(index(moment, size), [0, 0])
        bucket[0] += total
        bucket[1] += refused
    rows = []
    for number in range(index(first, size), index(last, size) + 1):
        total, refused = buckets.get(number, (0, 0))
        start = origin + number * size * _HOUR  # within first and last: no overflow
        label = _hour_key(start)[:10] if size >= 24 else _hour_key(start).replace("T", " ") + ":00"
        rows.append((label, total, refused))
    return size, rows


def _bucket_name(size: int) -> str:
    if size == 1:
        return "hour"
    if size % 24 == 0:
        return "day" if size == 24 else f"{size // 24} days"
    return f"{size} hours"


def _render_hours(report: Report, out: TextIO, width: int) -> None:
    size, rows = histogram(report.hourly)
    if not rows:
        return
    peak = max(total for _, total, _ in rows) or 1
    out.write(f"\nEvents per {_bucket_name(size)} (UTC)   {'█'} events  {'░'} of them refused\n")
    if report.events_before_histogram:
        out.write(f"  ({report.events_before_histogram} events in earlier hours not drawn)\n")
    for label, total, refused in rows:
        cells = round(width * total / peak)
        shaded = round(width * refused / peak) if refused else 0
        if refused and not shaded:
            shaded = 1
        cells = max(cells, shaded)
        bar = "█" * (cells - shaded) + "░" * shaded
        out.write(
            f"  {label:<16}  {bar:<{width}}  {total}"
            + (f" ({refused} refused)\n" if refused else "\n")
        )
