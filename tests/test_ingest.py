"""``jwt-audit ingest``: JSON lines into the SQL table, each line once, across kills and rotations.

SQLite always; PostgreSQL from ``JWTAUDIT_TEST_POSTGRES_URL`` (``.ci/services.sh``):
skipped without it locally, failed without it under ``CI=true``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from jwt_audit_middleware.audit import AuditLogger, JSONFormatter
from jwt_audit_middleware.events import app_event
from jwt_audit_middleware.ingest import files_of, ingest
from jwt_audit_middleware.report import report_from_database
from jwt_audit_middleware.sinks.jsonl import JSONLinesHandler

IN_CI = os.environ.get("CI", "").lower() == "true"


def event_line(n: int, *, outcome: str = "allowed") -> str:
    event = app_event(
        "access" if outcome == "allowed" else "denial",
        outcome,
        reason=None if outcome == "allowed" else "expired",
        subject=f"user-{n % 7}",
        client_ip="192.0.2.1",
        request_id=f"req-{n}",
        path="/orders",
        method="GET",
    )
    event["status"] = 200 if outcome == "allowed" else 401
    return json.dumps({**event, "level": "INFO", "logger": "jwt_audit"}) + "\n"


def write_lines(path: Path, start: int, count: int) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(event_line(n) for n in range(start, start + count))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL, table): a private table in each database."""
    table = f"ingest_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}", table
        return
    url = os.environ.get("JWTAUDIT_TEST_POSTGRES_URL")
    if not url:
        if IN_CI:
            pytest.fail("JWTAUDIT_TEST_POSTGRES_URL is not set; CI must run .ci/services.sh")
        pytest.skip("JWTAUDIT_TEST_POSTGRES_URL not set (run .ci/services.sh)")
    yield url, table
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for name in (table, f"{table}_schema", f"{table}_ingest"):
            connection.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()


def stored(url: str, table: str) -> tuple[int, int]:
    """(rows, distinct event ids) in the table."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.text(f'SELECT count(*), count(DISTINCT event_id) FROM "{table}"')
            ).one()
    finally:
        engine.dispose()
    return int(row[0]), int(row[1])


def test_every_line_once_even_when_run_again(db: tuple[str, str], tmp_path: Path) -> None:
    url, table = db
    live = tmp_path / "audit.jsonl"
    write_lines(live, 0, 1200)
    first = ingest(url, [str(live)], table=table, batch=500)
    assert (first.events, first.batches, first.skipped) == (1200, 3, 0)
    again = ingest(url, [str(live)], table=table, batch=500)
    assert again.events == 0  # the checkpoint says it is all in
    write_lines(live, 1200, 30)
    assert ingest(url, [str(live)], table=table).events == 30
    assert stored(url, table) == (1230, 1230)
    report = report_from_database(url, None, 5, table)
    assert report.to_dict()["total"] == 1230


def test_a_batch_loaded_twice_keeps_one_row_per_line(db: tuple[str, str], tmp_path: Path) -> None:
    url, table = db
    live = tmp_path / "audit.jsonl"
    write_lines(live, 0, 100)
    ingest(url, [str(live)], table=table)
    copy = tmp_path / "copy.jsonl"  # the same lines in another file: other inode, same ids
    copy.write_bytes(live.read_bytes())
    assert ingest(url, [str(copy)], table=table).events == 100
    assert stored(url, table) == (100, 100)


def test_rotation_between_runs_finishes_the_old_file_first(
    db: tuple[str, str], tmp_path: Path
) -> None:
    url, table = db
    live = tmp_path / "audit.jsonl"
    write_lines(live, 0, 300)
    ingest(url, [str(live)], table=table, batch=100)
    write_lines(live, 300, 50)  # written, then rotated before the next run
    live.rename(tmp_path / "audit.jsonl.20261208T010000Z")
    write_lines(live, 350, 70)
    (tmp_path / "audit.jsonl.20261201T000000Z.gz").write_bytes(b"\x1f\x8b not read")
    assert files_of(str(live))[-1] == str(live)
    stats = ingest(url, [str(live)], table=table)
    assert stats.events == 120
    assert stored(url, table) == (420, 420)


def test_truncated_files_and_partial_lines(db: tuple[str, str], tmp_path: Path) -> None:
    url, table = db
    live = tmp_path / "audit.jsonl"
    write_lines(live, 0, 20)
    with live.open("a") as handle:
        handle.write(event_line(20)[:40])  # a line still being written
    assert ingest(url, [str(live)], table=table).events == 20
    with live.open("a") as handle:
        handle.write(event_line(20)[40:])  # ... now complete
    assert ingest(url, [str(live)], table=table).events == 1
    live.write_text("")  # truncated in place (copytruncate), then new lines
    write_lines(live, 1000, 5)
    assert ingest(url, [str(live)], table=table).events == 5
    assert stored(url, table) == (26, 26)


def test_lines_that_are_not_events_are_skipped_and_counted(
    db: tuple[str, str], tmp_path: Path
) -> None:
    url, table = db
    live = tmp_path / "audit.jsonl"
    write_lines(live, 0, 3)
    with live.open("a") as handle:
        handle.write("not json\n[1, 2]\n{}\n\n")
        handle.write(json.dumps({"event": "chain_closed", "outcome": "closed"}) + "\n")
    stats = ingest(url, [str(live)], table=table)
    assert (stats.events, stats.skipped) == (3, 4)


def test_a_real_handler_file_with_rotation_and_a_chain(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    handler = JSONLinesHandler(str(live), max_bytes=20_000, chain=True)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger(f"jwt_audit.ingest_test.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    audit = AuditLogger(logger)
    for n in range(300):
        audit.emit(app_event("access", "allowed", subject=f"u{n}", request_id=f"r-{n}"))
    handler.close()
    assert len(files_of(str(live))) > 1  # it rotated
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    stats = ingest(url, [str(live)])
    assert stats.events == 300
    assert stats.skipped >= 1  # the closing record of the chain


def test_killed_mid_batch_and_restarted_stores_every_line_once(
    db: tuple[str, str], tmp_path: Path
) -> None:
    url, table = db
    live = tmp_path / "audit.jsonl"
    total = 60_000
    write_lines(live, 0, total)
    command = [
        sys.executable,
        "-m",
        "jwt_audit_middleware.cli",
        "ingest",
        "--file",
        str(live),
        "--db",
        url,
        "--table",
        table,
        "--batch",
        "500",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once some batches, not all, are in
        try:
            count = stored(url, table)[0]
        except sa.exc.SQLAlchemyError:
            count = 0
        if count >= 2000:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    partial = stored(url, table)[0]
    assert 0 < partial < total, "the ingester was not killed mid-way"
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert stored(url, table) == (total, total)


def test_follow_picks_up_new_lines_and_stops_on_sigterm(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    write_lines(live, 0, 10)
    command = [sys.executable, "-m", "jwt_audit_middleware.cli", "ingest", "--follow"]
    process = subprocess.Popen(
        [*command, "--file", str(live), "--db", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        seen = 0
        write_lines(live, 10, 15)
        while time.monotonic() < deadline and seen < 25:
            time.sleep(0.1)
            try:
                seen = stored(url, "jwt_audit_events")[0]
            except sa.exc.SQLAlchemyError:
                seen = 0
        assert seen == 25
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.startswith("25 events")


def test_command_line_errors_are_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jwt_audit_middleware.cli",
            "ingest",
            "--file",
            str(tmp_path / "a.jsonl"),
            "--db",
            "sqlite:///x.db",
            "--batch",
            "0",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--batch 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_database_that_is_down_is_one_line_without_the_password(tmp_path: Path) -> None:
    live = tmp_path / "audit.jsonl"
    write_lines(live, 0, 3)
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jwt_audit_middleware.cli",
            "ingest",
            "--file",
            str(live),
            "--db",
            f"postgresql+psycopg://audit:hunter2@127.0.0.1:{port}/audit",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
