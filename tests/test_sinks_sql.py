"""SQLAuditHandler on SQLite, PostgreSQL and MariaDB: nothing lost, nothing twice.

PostgreSQL and MariaDB come from ``JWTAUDIT_TEST_POSTGRES_URL`` and
``JWTAUDIT_TEST_MARIADB_URL`` (``.ci/services.sh`` starts both and prints
them).  Without them these tests skip locally and fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import logging.config
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_sinks_jsonl import LOGGER, burst

from jwt_audit_middleware import AuditLogger
from jwt_audit_middleware.schema import (
    CHAIN_COLUMNS,
    SCHEMA_VERSION,
    STRING_COLUMNS,
    event_tables,
)
from jwt_audit_middleware.sinks import SQLAuditHandler
from jwt_audit_middleware.sinks import sql as sql_sink
from jwt_audit_middleware.sinks.sql import ROW_COLUMNS, event_row, new_event_ids
from jwt_audit_middleware.testing import SigningKey

IN_CI = os.environ.get("CI", "").lower() == "true"
SERVERS = {
    "postgresql": "JWTAUDIT_TEST_POSTGRES_URL",
    "mariadb": "JWTAUDIT_TEST_MARIADB_URL",
}


def server_url(name: str) -> str:
    variable = SERVERS[name]
    url = os.environ.get(variable)
    if not url:
        if IN_CI:
            pytest.fail(f"{variable} is not set; CI must run .ci/services.sh first")
        pytest.skip(f"{variable} not set (run .ci/services.sh)")
    return url


class Store:
    """One test table on one database, dropped afterwards."""

    def __init__(self, url: str, table: str) -> None:
        self.url = url
        self.table = table
        self.handlers: list[SQLAuditHandler] = []

    def handler(self, **options: Any) -> SQLAuditHandler:
        handler = SQLAuditHandler(self.url, table=self.table, **options)
        self.handlers.append(handler)
        LOGGER.addHandler(handler)
        return handler

    def rows(self, *columns: str) -> list[tuple[Any, ...]]:
        engine = sa.create_engine(self.url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            names = ", ".join(columns)
            with engine.connect() as db:
                return [tuple(r) for r in db.execute(sa.text(f"SELECT {names} FROM {self.table}"))]
        finally:
            engine.dispose()

    def close(self) -> None:
        for handler in self.handlers:
            LOGGER.removeHandler(handler)
            handler.close()
        if not self.url.startswith("sqlite"):
            engine = sa.create_engine(self.url)
            with engine.begin() as db:
                db.execute(sa.text(f"DROP TABLE IF EXISTS {self.table}"))
                db.execute(sa.text(f"DROP TABLE IF EXISTS {self.table}_schema"))
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        url = server_url(request.param)
    table = "t_" + uuid.uuid4().hex[:12]
    made = Store(url, table)
    yield made
    made.close()


def test_2000_concurrent_requests_leave_exactly_2000_rows(
    store: Store, keys: dict[str, SigningKey]
) -> None:
    handler = store.handler(batch_size=200, flush_interval=0.05)
    ids = asyncio.run(burst(keys["ES256"], 2000))
    handler.close()
    rows = store.rows("request_id", "event_id", "outcome", "status", "data")
    assert len(rows) == 2000
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert len({r[1] for r in rows}) == 2000
    assert {r[2] for r in rows} == {"allowed", "denied"}
    assert {r[3] for r in rows} == {200, 401}
    data = rows[0][4]
    event = json.loads(data) if isinstance(data, str) else data
    assert event["schema"] == "jwt-audit/1"
    assert handler.stats()["written"] == 2000
    assert handler.stats()["spilled"] == 0


def test_typed_columns_and_schema_version(store: Store) -> None:
    handler = store.handler()
    AuditLogger().login_failed(
        "eve\r\n", reason="bad_password", client_ip="203.0.113.5", path="/login"
    )
    handler.close()
    ((event, outcome, reason, subject, client_ip, path, level, when),) = store.rows(
        "event", "outcome", "reason", "subject", "client_ip", "path", "level", "time"
    )
    assert (event, outcome, reason, client_ip, path, level) == (
        "login_failed",
        "denied",
        "bad_password",
        "203.0.113.5",
        "/login",
        "WARNING",
    )
    assert subject == "eve\\x0d\\x0a"
    assert str(when)[:4].isdigit()
    engine = sa.create_engine(store.url)
    with engine.connect() as db:
        version = db.execute(sa.text(f"SELECT version FROM {store.table}_schema")).scalar()
        indexes = {ix["name"] for ix in sa.inspect(db).get_indexes(store.table)}
    engine.dispose()
    assert version == SCHEMA_VERSION
    assert f"ix_{store.table}_outcome_time" in indexes
    assert f"ix_{store.table}_time" in indexes


def test_a_retried_batch_is_not_stored_twice(store: Store) -> None:
    """The commit whose acknowledgement was lost: the same rows written again."""
    handler = store.handler()
    event = AuditLogger().build_event("login_succeeded", "allowed", subject="alice")
    records = [logging.makeLogRecord({"jwt_audit": event, "levelname": "INFO"}) for _ in range(3)]
    rows = handler.prepare(records)  # each gets its event_id here, once
    handler.write_batch(rows[:1])  # a batch half stored before: the rest still goes in
    handler.write_batch(rows)
    handler.write_batch(rows)  # the retry
    handler.write_batch(rows[:1])
    assert sorted(r[0] for r in store.rows("event_id")) == sorted(row[0] for row in rows)
    assert handler.stats()["spilled"] == 0


def test_a_row_the_database_refuses_is_spilled_and_the_rest_stored(tmp_path: Path) -> None:
    """PostgreSQL's JSONB takes no NaN: the batch (one COPY) fails, its rows go one by one."""
    store = Store(server_url("postgresql"), "t_" + uuid.uuid4().hex[:12])
    spill = tmp_path / "spill.jsonl"
    handler = store.handler(spill_path=spill)
    try:
        audit = AuditLogger()
        for i in range(5):
            event = audit.build_event("login_succeeded", "allowed", subject=f"user{i}")
            event["claims"] = {"score": float("nan") if i == 2 else 1.5}
            audit.emit(event)
        handler.close()
        assert sorted(r[0] for r in store.rows("subject")) == ["user0", "user1", "user3", "user4"]
        assert [json.loads(line)["subject"] for line in spill.read_text().splitlines()] == ["user2"]
        assert handler.stats()["spilled"] == 1
    finally:
        store.close()


def test_event_row_fits_each_column() -> None:
    """``event_row`` against a plain reading of ``STRING_COLUMNS``, value by value."""

    def expected(event: dict[str, Any]) -> tuple[Any, ...]:
        strings = []
        for name, length in STRING_COLUMNS:
            value = event.get(name)
            if value is not None:
                value = str(value)
                if len(value) > length:
                    value = value[: length - 1] + "…"
            strings.append(value)
        for kind in (1, 2):  # event, outcome
            if strings[kind] is None:
                strings[kind] = "unknown"
        status, duration = event.get("status"), event.get("duration_ms")
        return (
            "id",
            "when",
            "INFO",
            *strings,
            status if type(status) is int else None,
            float(duration) if type(duration) in (int, float) else None,
            json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str),
        )

    base = AuditLogger().build_event("access", "allowed", subject="alice", method="GET")
    odd: list[Any] = [None, "", "x" * 2000, 42, True, 1.5, ["a"], {"k": 1}, b"raw", "é" * 400]
    for value in odd:
        for name, _ in STRING_COLUMNS:
            event = {**base, name: value, "status": value, "duration_ms": value}
            assert event_row(event, "INFO", "id", "when") == expected(event), (name, value)
    assert event_row({}, "INFO", "id", "when") == expected({})


def test_one_table_layout_for_the_sink_and_the_report() -> None:
    """``schema`` defines the table; the sink writes its columns, in row order."""
    assert sql_sink.event_tables is event_tables
    assert sql_sink.SCHEMA_VERSION == SCHEMA_VERSION
    _, events, version = event_tables("t")
    assert (events.name, version.name) == ("t", "t_schema")
    assert [c.name for c in events.columns] == ["id", *ROW_COLUMNS, *CHAIN_COLUMNS]
    assert {c.name for c in events.columns if not c.nullable} == {
        "id",
        "event_id",
        "time",
        "level",
        "event",
        "outcome",
        "data",
    }
    assert sorted(i.name for i in events.indexes) == [
        "ix_t_outcome_time",
        "ix_t_request_id",
        "ix_t_time",
        "ix_t_token_fingerprint",
    ]
    row = event_row({"event": "access", "outcome": "allowed"}, "INFO", "id", "when")
    assert len(row) == len(ROW_COLUMNS)


def test_event_ids_are_unique_and_ordered_by_time() -> None:
    first = new_event_ids(1000)
    time.sleep(0.002)
    second = new_event_ids(1000)
    assert len(set(first + second)) == 2000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first + second)
    assert max(first)[:12] < min(second)[:12]  # milliseconds first: appended to the index


def test_times_and_typed_values_as_stored(store: Store) -> None:
    """Rows go in as the driver's own text (COPY, multi-row INSERT): read back typed."""
    handler = store.handler()
    audit = AuditLogger()
    event = audit.build_event("access", "allowed", method="GET")
    event.update(time="2025-05-20T10:00:00.123Z", status=201, duration_ms=1, request_id="typed")
    event["subject"] = "s" * 400  # longer than its column
    odd = audit.build_event("access", "denied", subject="odd")
    odd.update(time="yesterday", status="200", duration_ms="slow", request_id="odd", event=None)
    audit.emit(event)
    audit.emit(odd, logging.WARNING)
    handler.close()
    rows = {
        r[0]: r[1:]
        for r in store.rows("request_id", "time", "status", "duration_ms", "subject", "event")
    }
    when, status, duration, subject, kind = rows["typed"]
    if isinstance(when, str):  # SQLite: SQLAlchemy's text format
        when = datetime.datetime.fromisoformat(when)
    assert when == datetime.datetime(2025, 5, 20, 10, 0, 0, 123000)
    assert (status, duration, kind) == (201, 1.0, "access")
    assert subject == "s" * 299 + "…"
    when, status, duration, subject, kind = rows["odd"]
    assert str(when)[:2] == "20"  # the record's own time instead
    assert (status, duration, kind) == (None, None, "unknown")


@pytest.mark.parametrize("isolation", [None, "SERIALIZABLE"])
def test_sqlite_batches_of_any_size(tmp_path: Path, isolation: str | None) -> None:
    """A full batch is one statement; others several, plus one-row INSERTs: all stored once."""
    db = tmp_path / "audit.db"
    options = {"isolation_level": isolation} if isolation else None
    handler = SQLAuditHandler(f"sqlite:///{db}", batch_size=500, engine_options=options)
    statements: list[str] = []

    @sa.event.listens_for(handler.engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        if args[2].startswith("INSERT INTO jwt_audit_events "):
            statements.append(args[2])

    try:
        event = AuditLogger().build_event("login_succeeded", "allowed", subject="alice")
        records = [
            logging.makeLogRecord({"jwt_audit": {**event, "request_id": f"r{i}"}})
            for i in range(1734)
        ]
        rows = handler.prepare(records)
        handler.write_batch(rows[:500])  # a full batch: one statement
        assert len(statements) == 1
        handler.write_batch(rows[500:])  # 1234 rows: 500 + 500 + 125 + 62 + 47 one by one
        assert len(statements) == 6
        handler.write_batch(rows[1100:])  # a retry of part of it
    finally:
        handler.close()
    with sqlite3.connect(db) as connection:
        stored = connection.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM jwt_audit_events"
        )
        assert stored.fetchone() == (1734, 1734)
        # a new store gets 16 KiB pages: a row is ~1 KiB
        assert connection.execute("PRAGMA page_size").fetchone() == (16384,)


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    handler = SQLAuditHandler(f"sqlite:///{db}")
    LOGGER.addHandler(handler)
    try:
        AuditLogger().login_succeeded("alice")
    finally:
        LOGGER.removeHandler(handler)
        handler.close()
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.stat().st_mode & 0o777 == 0o600  # subjects and IPs: the owner's only, as JSON lines
    with handler.engine.connect() as connection:  # a committed batch survives a power cut
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_full_queue_blocks_briefly_then_spills_and_counts(tmp_path: Path) -> None:
    """The database is locked by someone else: the queue fills, then spills; none lost."""
    db = tmp_path / "audit.db"
    spill = tmp_path / "spill.jsonl"
    handler = SQLAuditHandler(
        f"sqlite:///{db}",
        queue_size=50,
        batch_size=10,
        flush_interval=0.01,
        block_timeout=0.05,
        spill_path=spill,
        max_retry_delay=0.2,
    )
    LOGGER.addHandler(handler)
    audit = AuditLogger()
    try:
        audit.login_succeeded("first")
        assert handler.drain(10)  # table created
        locker = sqlite3.connect(db, timeout=0, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        started = time.perf_counter()
        for i in range(300):
            audit.login_succeeded(f"user{i}")
        elapsed = time.perf_counter() - started
        assert elapsed < 3.0  # waited once, then spilled without waiting
        spilled = handler.stats()["spilled"]
        assert spilled >= 200
        locker.execute("ROLLBACK")
        locker.close()
    finally:
        LOGGER.removeHandler(handler)
        handler.close()
    with sqlite3.connect(db) as connection:
        stored = [r[0] for r in connection.execute("SELECT subject FROM jwt_audit_events")]
    spilled_subjects = [json.loads(line)["subject"] for line in spill.read_text().splitlines()]
    assert len(spilled_subjects) == spilled == handler.stats()["spilled"]
    everything = stored + spilled_subjects
    assert sorted(everything) == sorted(["first"] + [f"user{i}" for i in range(300)])


def test_dictconfig_by_dotted_path(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "audit_db": {
                    "class": "jwt_audit_middleware.sinks.SQLAuditHandler",
                    "url": f"sqlite:///{db}",
                    "batch_size": 100,
                    "flush_interval": 0.1,
                }
            },
            "loggers": {"jwt_audit": {"handlers": ["audit_db"], "level": "INFO"}},
        }
    )
    try:
        (handler,) = [h for h in LOGGER.handlers if isinstance(h, SQLAuditHandler)]
        AuditLogger().login_succeeded("django-user", client_ip="192.0.2.3")
        handler.flush()
        with sqlite3.connect(db) as connection:
            rows = connection.execute("SELECT event, subject FROM jwt_audit_events").fetchall()
        assert rows == [("login_succeeded", "django-user")]
    finally:
        for h in list(LOGGER.handlers):
            if isinstance(h, SQLAuditHandler):
                LOGGER.removeHandler(h)
                h.close()
        LOGGER.addHandler(logging.NullHandler())


def test_repr_hides_the_password() -> None:
    handler = SQLAuditHandler("postgresql://audit:s3cret-pw@127.0.0.1:1/x")
    try:
        assert "s3cret-pw" not in repr(handler)
        assert handler.engine.dialect.driver == "psycopg"
    finally:
        handler.close()


# -- PostgreSQL outage ------------------------------------------------------------------


def pg_ctl(action: str) -> None:
    """Stop or start the test server, until it is so.

    The server may be shared with other test runs that stop and start it too:
    "already running" is success, and an action that raced with theirs is tried
    again (for up to a minute).
    """
    command = [*shlex.split(os.environ["JWTAUDIT_TEST_POSTGRES_CTL"])]
    deadline = time.monotonic() + 60
    while True:
        subprocess.run([*command, action], check=False, timeout=120, capture_output=True)
        status = subprocess.run([*command, "status"], check=False, timeout=60, capture_output=True)
        if (status.returncode == 0) == (action == "start"):
            return
        assert time.monotonic() < deadline, f"pg_ctlcluster {action} failed"
        time.sleep(0.5)


def test_postgres_restart_in_the_middle_of_a_burst() -> None:
    url = server_url("postgresql")
    if not os.environ.get("JWTAUDIT_TEST_POSTGRES_CTL"):
        if IN_CI:
            pytest.fail("JWTAUDIT_TEST_POSTGRES_CTL is not set")
        pytest.skip("JWTAUDIT_TEST_POSTGRES_CTL not set")
    store = Store(url, "t_" + uuid.uuid4().hex[:12])
    handler = store.handler(
        batch_size=100, flush_interval=0.05, queue_size=50_000, max_retry_delay=0.5
    )
    audit = AuditLogger()
    total = 6000
    try:
        audit.login_succeeded("warm-up")
        assert handler.drain(30)

        def produce() -> None:
            for i in range(total):
                audit.login_succeeded(f"user{i}", request_id=f"burst-{i}")
                if i % 100 == 0:
                    time.sleep(0.02)

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(0.3)
        pg_ctl("stop")
        try:
            time.sleep(1.0)
        finally:
            pg_ctl("start")
        producer.join()
        for handler_ in store.handlers:
            LOGGER.removeHandler(handler_)
        handler.close()
        assert handler.stats()["retries"] > 0  # the outage was seen
        assert handler.stats()["spilled"] == 0
        ids = [r[0] for r in store.rows("request_id") if r[0].startswith("burst-")]
        assert len(ids) == total
        assert len(set(ids)) == total
    finally:
        store.close()


# -- gunicorn worker stopped with SIGTERM ------------------------------------------------------

APP = textwrap.dedent(
    """
    import logging
    from jwt_audit_middleware import AuditLogger
    from jwt_audit_middleware.sinks import SQLAuditHandler

    logging.getLogger("jwt_audit").addHandler(
        SQLAuditHandler("{url}", batch_size=100_000, flush_interval=3600)
    )
    audit = AuditLogger()

    def app(environ, start_response):
        audit.login_succeeded("gunicorn-user", client_ip=environ.get("REMOTE_ADDR"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.e2e
def test_gunicorn_worker_sigterm_flushes_buffered_events(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    (tmp_path / "audit_app.py").write_text(APP.format(url=f"sqlite:///{db}"))
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--chdir",
            str(tmp_path),
            "audit_app:app",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    assert response.read() == b"ok"
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        for _ in range(49):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert response.status == 200
        # buffered, not yet written: the batch is not full and the interval is an hour
        assert not db.exists() or _count(db) == 0
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0].decode()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, output
    assert _count(db) == 50


def _count(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        try:
            return int(connection.execute("SELECT count(*) FROM jwt_audit_events").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
