"""The audit report: what ``jwt-audit report`` computes and draws.

From a SQL store (the ``SQLAuditHandler`` table; grouped by the database, using
its indexes) or from JSON-lines files (``JSONLinesHandler`` output, rotated files,
a spill file; counted in Python): totals by outcome and event, what was not
allowed by reason, client IP and subject, the paths most often refused, and an
hourly histogram.  "Refused" means any outcome other than ``allowed``:
``denied``, ``would_deny`` (report-only mode) and failed logins.
"""

from __future__ import annotations

import datetime
import heapq
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
HOUR_FORMAT = "%Y-%m-%dT%H"

#: Distinct values a ``TopK`` counts.  Below it, counts are exact; past it, they
#: are Space-Saving estimates (upper bounds).
COUNTER_CAPACITY = 1000


def parse_since(text: str | None, now: datetime.datetime | None = None) -> datetime.datetime | None:
    """``"24h"``, ``"30m"``, ``"7d"``, ``"2w"`` → a naive UTC datetime; ``"all"``/None → None."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    match = _SINCE.match(text)
    if match is None:
        raise ValueError(f"cannot read {text!r}: use a number and s, m, h, d or w (e.g. 24h)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    return (now or utcnow()) - datetime.timedelta(seconds=seconds)


def utcnow() -> datetime.datetime:
    """Now, as a naive UTC datetime (how the SQL store keeps times)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


@dataclass
class Report:
    """The figures of one report; ``to_dict()`` is what ``--json`` prints."""

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
    hourly: list[tuple[str, int, int]] = field(default_factory=list)
    unreadable_lines: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        data = asdict(self)
        for key in (
            "refused_by_reason",
            "refused_by_client_ip",
            "refused_by_subject",
            "refused_paths",
            "top_client_ips",
            "top_subjects",
        ):
            data[key] = [{"value": value, "count": count} for value, count in data[key]]
        data["hourly"] = [
            {"hour": hour, "events": total, "refused": refused}
            for hour, total, refused in self.hourly
        ]
        return data


def _top(counter: Counter[str], limit: int) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:limit]


def _fill_hours(counts: dict[str, tuple[int, int]]) -> list[tuple[str, int, int]]:
    """Every hour from the first to the last with events, empty ones included."""
    if not counts:
        return []
    hours = sorted(counts)
    first = datetime.datetime.strptime(hours[0], HOUR_FORMAT)
    last = datetime.datetime.strptime(hours[-1], HOUR_FORMAT)
    if (last - first) > datetime.timedelta(days=31):  # sparse: only the hours with events
        return [(h, *counts[h]) for h in hours]
    rows = []
    hour = first
    while hour <= last:
        key = hour.strftime(HOUR_FORMAT)
        rows.append((key, *counts.get(key, (0, 0))))
        hour += datetime.timedelta(hours=1)
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


# -- JSON-lines files --------------------------------------------------------------


def _event_time(text: object) -> datetime.datetime | None:
    if not isinstance(text, str) or not text.endswith("Z"):
        return None
    try:
        return datetime.datetime.fromisoformat(text[:-1])
    except ValueError:
        return None


def report_from_lines(
    lines: Iterable[str],
    source: str,
    since: datetime.datetime | None = None,
    limit: int = 10,
) -> Report:
    """The report of JSON lines (non-audit lines are skipped, bad ones counted)."""
    report = Report(source=source, since=_iso(since))
    outcomes: Counter[str] = Counter()
    events: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    refused_ips: Counter[str] = Counter()
    refused_subjects: Counter[str] = Counter()
    refused_paths: Counter[str] = Counter()
    ips: Counter[str] = Counter()
    subjects: Counter[str] = Counter()
    hours: dict[str, tuple[int, int]] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            report.unreadable_lines += 1
            continue
        if not isinstance(event, dict) or "outcome" not in event or "event" not in event:
            continue
        when = _event_time(event.get("time"))
        if when is None:
            report.unreadable_lines += 1
            continue
        if since is not None and when < since:
            continue
        outcome = str(event["outcome"])
        refused = outcome != "allowed"
        report.total += 1
        outcomes[outcome] += 1
        events[str(event["event"])] += 1
        ip, subject = event.get("client_ip"), event.get("subject")
        if ip:
            ips[str(ip)] += 1
        if subject:
            subjects[str(subject)] += 1
        if refused:
            reasons[str(event.get("reason"))] += 1
            if ip:
                refused_ips[str(ip)] += 1
            if subject:
                refused_subjects[str(subject)] += 1
            if event.get("path"):
                refused_paths[str(event["path"])] += 1
        hour = when.strftime(HOUR_FORMAT)
        total, denied = hours.get(hour, (0, 0))
        hours[hour] = (total + 1, denied + refused)
    report.by_outcome = dict(_top(outcomes, 100))
    report.by_event = dict(_top(events, 100))
    report.refused_by_reason = _top(reasons, limit)
    report.refused_by_client_ip = _top(refused_ips, limit)
    report.refused_by_subject = _top(refused_subjects, limit)
    report.refused_paths = _top(refused_paths, limit)
    report.top_client_ips = _top(ips, limit)
    report.top_subjects = _top(subjects, limit)
    report.hourly = _fill_hours(hours)
    return report


def report_from_files(
    paths: Sequence[str], since: datetime.datetime | None = None, limit: int = 10
) -> Report:
    """The report of one or more JSON-lines files, read in order."""

    def lines() -> Iterable[str]:
        for path in paths:
            with open(path, encoding="utf-8", errors="replace") as handle:
                yield from handle

    return report_from_lines(lines(), ", ".join(paths), since, limit)


# -- SQL ---------------------------------------------------------------------------------


def report_from_database(
    url: str,
    since: datetime.datetime | None = None,
    limit: int = 10,
    table: str | None = None,
) -> Report:
    """The report of a ``SQLAuditHandler`` table, grouped by the database."""
    import sqlalchemy as sa  # noqa: PLC0415 - only the SQL report needs it
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    from .sinks.sql import DEFAULT_TABLE, create_audit_engine, event_tables  # noqa: PLC0415

    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ValueError(
            f"not a database URL: {url!r} (e.g. sqlite:///audit.db or postgresql://host/db)"
        ) from None
    database = parsed.database or ""
    sqlite_file = parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if sqlite_file and not os.path.exists(database):
        # a typo must not report "0 events", nor create an empty store
        raise FileNotFoundError(f"no such database file: {database}")
    engine = create_audit_engine(parsed)
    try:
        _, events, _ = event_tables(table or DEFAULT_TABLE)
        source = engine.url.render_as_string(hide_password=True)
        report = Report(source=source, since=_iso(since))
        if not sa.inspect(engine).has_table(events.name):
            raise ValueError(f"{source} has no table {events.name!r}: is it a jwt-audit store?")
        c = events.c
        window = [c.time >= since] if since is not None else []
        refused = c.outcome != "allowed"
        count = sa.func.count()
        dialect = engine.dialect.name
        if dialect == "postgresql":
            hour: Any = sa.func.to_char(c.time, 'YYYY-MM-DD"T"HH24')
        elif dialect in ("mysql", "mariadb"):
            hour = sa.func.date_format(c.time, "%Y-%m-%dT%H")
        else:
            hour = sa.func.strftime("%Y-%m-%dT%H", c.time)

        with engine.connect() as db:

            def top(column: Any, *where: Any) -> list[tuple[str, int]]:
                query = (
                    sa.select(column, count)
                    .where(*window, *where)
                    .group_by(column)
                    .order_by(count.desc(), column)
                    .limit(limit)
                )
                return [(str(value), int(n)) for value, n in db.execute(query)]

            def totals(column: Any) -> dict[str, int]:
                query = sa.select(column, count).where(*window).group_by(column)
                rows = sorted(db.execute(query), key=lambda row: (-row[1], str(row[0])))
                return {str(value): int(n) for value, n in rows}

            report.by_outcome = totals(c.outcome)
            report.by_event = totals(c.event)
            report.total = sum(report.by_outcome.values())
            report.refused_by_reason = top(c.reason, refused)
            report.refused_by_client_ip = top(c.client_ip, refused, c.client_ip.is_not(None))
            report.refused_by_subject = top(c.subject, refused, c.subject.is_not(None))
            report.refused_paths = top(c.path, refused, c.path.is_not(None))
            report.top_client_ips = top(c.client_ip, c.client_ip.is_not(None))
            report.top_subjects = top(c.subject, c.subject.is_not(None))
            hourly = (
                sa.select(hour, count, sa.func.sum(sa.case((refused, 1), else_=0)))
                .where(*window)
                .group_by(hour)
            )
            report.hourly = _fill_hours(
                {str(h): (int(n), int(d or 0)) for h, n, d in db.execute(hourly)}
            )
        return report
    finally:
        engine.dispose()


def _iso(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- drawing ---------------------------------------------------------------------------------


def render(report: Report, out: TextIO, width: int = 40) -> None:
    """The report as text for a terminal."""
    since = f" since {report.since}" if report.since else ""
    out.write(f"Audit report: {report.source}{since}\n")
    out.write(f"{report.total} events")
    if report.by_outcome:
        out.write(": " + ", ".join(f"{n} {outcome}" for outcome, n in report.by_outcome.items()))
    out.write("\n")
    if report.unreadable_lines:
        out.write(f"({report.unreadable_lines} unreadable lines skipped)\n")
    if report.by_event:
        out.write("by event: " + ", ".join(f"{n} {e}" for e, n in report.by_event.items()) + "\n")
    sections = [
        ("Refused, by reason", report.refused_by_reason),
        ("Refused, by client IP", report.refused_by_client_ip),
        ("Refused, by subject", report.refused_by_subject),
        ("Most refused paths", report.refused_paths),
        ("Top client IPs (all events)", report.top_client_ips),
        ("Top subjects (all events)", report.top_subjects),
    ]
    for title, rows in sections:
        if not rows:
            continue
        out.write(f"\n{title}\n")
        for value, n in rows:
            out.write(f"  {n:>8}  {value}\n")
    if report.hourly:
        peak = max(total for _, total, _ in report.hourly) or 1
        out.write(f"\nEvents per hour (UTC)   {'█'} allowed  {'░'} refused\n")
        for hour, total, refused in report.hourly:
            cells = round(width * total / peak)
            shaded = round(width * refused / peak) if refused else 0
            if refused and not shaded:
                shaded = 1
            cells = max(cells, shaded)
            bar = "█" * (cells - shaded) + "░" * shaded
            label = hour.replace("T", " ") + ":00"
            out.write(
                f"  {label}  {bar:<{width}}  {total}"
                + (f" ({refused} refused)\n" if refused else "\n")
            )
