"""``jwt-audit verify-log`` on real trails: files, SQLite, PostgreSQL and MariaDB.

Each trail is written by the real handlers with ``chain=True``, then tampered
with as an intruder would (an edited field, a deleted, inserted or swapped
record, a cut tail), and checked through the command line.  PostgreSQL and
MariaDB come from ``.ci/services.sh``: without them those cases skip locally
and fail when ``CI=true``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_sinks_sql import server_url

from jwt_audit_middleware import AuditLogger
from jwt_audit_middleware.chain import Chain
from jwt_audit_middleware.cli import main
from jwt_audit_middleware.schema import event_tables
from jwt_audit_middleware.sinks import JSONLinesHandler, SQLAuditHandler
from jwt_audit_middleware.sinks._worker import BackgroundHandler
from jwt_audit_middleware.verify_log import Progress, check_files, run

KEY = b"an example chain key of 32 bytes+"


def write_events(handler: BackgroundHandler, count: int, *, close: bool = True) -> None:
    """``count`` audit events through a logger of their own, then close the handler."""
    logger = logging.getLogger(f"jwt_audit.verify.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    audit = AuditLogger(logger)
    try:
        for n in range(count):
            event = audit.build_event(
                "access" if n % 3 else "denial",
                "allowed" if n % 3 else "denied",
                subject=f"user-{n % 5}",
                request_id=f"req-{n}",
                path="/orders",
            )
            event.update(status=200 if n % 3 else 401, duration_ms=0.25 + n)
            audit.emit(event)
    finally:
        logger.removeHandler(handler)
        if close:
            handler.close()
        else:
            handler.flush()


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``jwt-audit verify-log ARGS``: exit status and output (stdout and stderr)."""
    try:
        status = main(["verify-log", *args])
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def rehash(line: str) -> str:
    """An edited line with its SHA-256 recomputed, as an intruder without the key would."""
    body, _, _ = line.rstrip("\n").rpartition(',"hash":"')
    return f'{body},"hash":"{hashlib.sha256(body.encode()).hexdigest()}"}}\n'


# -- JSON-lines files -----------------------------------------------------------------


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write_events(JSONLinesHandler(path, chain=True), 20)
    return path


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_an_untouched_file_is_intact_and_shows_its_head(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = verify(capsys, "--file", str(trail))
    assert status == 0, out
    last = json.loads(lines_of(trail)[-1])
    assert last["event"] == "chain_closed"
    assert last["seq"] == 21
    assert f"head {last['hash']}" in out
    assert "seq 1-21, closed" in out
    assert "result: intact" in out


def test_an_edited_field_is_found_at_its_line(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(trail)
    assert '"outcome":"denied"' in lines[6]
    lines[6] = lines[6].replace('"outcome":"denied"', '"outcome":"allowed"')
    trail.write_text("".join(lines), encoding="utf-8")
    status, out = verify(capsys, "--file", str(trail))
    assert status == 1, out
    assert re.search(r"seq 7, \S+audit.jsonl line 7: edited: the record does not match", out)


def test_an_edit_with_its_hash_recomputed_breaks_the_next_link(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(trail)
    lines[6] = rehash(lines[6].replace('"outcome":"denied"', '"outcome":"allowed"'))
    trail.write_text("".join(lines), encoding="utf-8")
    status, out = verify(capsys, "--file", str(trail))
    assert status == 1, out
    assert "seq 7, " in out
    assert "line 7: edited: its hash is not the one seq 8" in out


def test_json_output_holds_the_findings_and_each_streams_head(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = verify(capsys, "--json", "--file", str(trail))
    data = json.loads(out)
    assert (status, data["result"], data["records"], data["findings"]) == (0, "intact", 21, [])
    (stream,) = data["streams"]
    assert stream["head"] == json.loads(lines_of(trail)[-1])["hash"]
    assert (stream["seq"], stream["closed"], stream["intact"]) == (21, True, True)
    trail.write_text("".join(lines_of(trail)[:-1]), encoding="utf-8")
    status, out = verify(capsys, "--json", "--require-closed", "--file", str(trail))
    assert (status, json.loads(out)["result"]) == (1, "tampered")


def test_a_deleted_record_is_found(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(trail)
    del lines[9]
    trail.write_text("".join(lines), encoding="utf-8")
    status, out = verify(capsys, "--file", str(trail))
    assert status == 1, out
    assert "seq 11, " in out
    assert "line 10: deleted: seq 10 missing" in out


def test_a_deleted_first_record_is_found(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trail.write_text("".join(lines_of(trail)[1:]), encoding="utf-8")
    status, out = verify(capsys, "--file", str(trail))
    assert status == 1, out
    assert "deleted: the stream starts at seq 2: record 1 is missing" in out


def test_inserted_records_are_found(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(trail)
    copy = [*lines[:5], lines[4], *lines[5:]]
    trail.write_text("".join(copy), encoding="utf-8")
    status, out = verify(capsys, "--file", str(trail))
    assert status == 1, out
    assert "line 6: inserted: a second copy of the record at" in out

    forged = '{"schema":"jwt-audit/1","event":"access","outcome":"allowed","subject":"eve"}\n'
    trail.write_text("".join([*lines[:5], forged, *lines[5:]]), encoding="utf-8")
    status, out = verify(capsys, "--file", str(trail))
    assert status == 1, out
    assert "line 6: inserted: a record without chain fields after chaining began" in out

    trail.write_text("".join([*lines, lines[3]]), encoding="utf-8")
    status, out = verify(capsys, "--file", str(trail))
    assert status == 1, out
    assert "line 22: inserted: a record after the stream's closing record" in out


def test_a_swapped_pair_is_found_as_reordered(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(trail)
    lines[11], lines[12] = lines[12], lines[11]
    trail.write_text("".join(lines), encoding="utf-8")
    status, out = verify(capsys, "--file", str(trail))
    assert status == 1, out
    assert "seq 13, " in out
    assert "line 12: reordered: seq 12 turns up later" in out


def test_a_cut_tail_leaves_the_stream_not_closed(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail.write_text("".join(lines_of(trail)[:-3]), encoding="utf-8")
    status, out = verify(capsys, "--file", str(trail))
    assert status == 0, out  # a running writer's stream looks the same
    assert "seq 1-18, NOT CLOSED" in out
    assert "1 stream not closed" in out
    status, out = verify(capsys, "--require-closed", "--file", str(trail))
    assert status == 1, out
    assert "result: TAMPERED (1 stream not closed" in out


def test_an_unchained_prefix_is_reported_not_tampering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(JSONLinesHandler(path), 5)  # before chain=True was turned on
    write_events(JSONLinesHandler(path, chain=True), 5)
    status, out = verify(capsys, "--file", str(path))
    assert status == 0, out
    assert "5 records before the first chained one carry no chain fields" in out
    assert "checked 11 records in 1 stream" in out


def test_a_keyed_trail_needs_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    key_file = tmp_path / "chain.key"
    key_file.write_bytes(KEY + b"\n")
    write_events(JSONLinesHandler(path, chain=True, chain_key_file=key_file), 10)
    assert verify(capsys, "--file", str(path), "--chain-key-file", str(key_file))[0] == 0

    status, out = verify(capsys, "--file", str(path))
    assert status == 2, out
    assert "written with a chain key: give --chain-key-file" in out

    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"w" * 32)
    status, out = verify(capsys, "--file", str(path), "--chain-key-file", str(wrong))
    assert status == 2, out
    assert "wrong --chain-key-file" in out
    assert "w" * 32 not in out
    assert KEY.decode() not in out

    # without the key, an edit cannot be re-chained: a recomputed SHA-256 fails
    lines = lines_of(path)
    lines[3] = rehash(lines[3].replace("user-3", "user-4"))
    path.write_text("".join(lines), encoding="utf-8")
    status, out = verify(capsys, "--file", str(path), "--chain-key-file", str(key_file))
    assert status == 1, out
    assert "seq 4, " in out
    assert "edited: the record does not match its hash" in out


def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = verify(capsys, "--file", str(tmp_path / "missing.jsonl"))
    assert (status, out.strip()) == (2, f"jwt-audit: no such file: {tmp_path}/missing.jsonl")
    status, out = verify(capsys, "--file", "x", "--chain-key-file", str(tmp_path / "no.key"))
    assert status == 2
    assert "chain_key_file: cannot read" in out
    short = tmp_path / "short.key"
    short.write_bytes(b"secret-but-short")
    status, out = verify(capsys, "--file", "x", "--chain-key-file", str(short))
    assert status == 2
    assert "at least 32 bytes" in out
    assert "secret-but-short" not in out
    status, out = verify(capsys)
    assert status == 2
    assert "one of the arguments --db --file is required" in out


def test_the_console_script_exit_statuses(trail: Path) -> None:
    command = [sys.executable, "-m", "jwt_audit_middleware.cli", "verify-log", "--file"]
    intact = subprocess.run([*command, str(trail)], capture_output=True, text=True, check=False)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    lines = lines_of(trail)
    trail.write_text("".join(lines[:4] + lines[5:]), encoding="utf-8")
    tampered = subprocess.run([*command, str(trail)], capture_output=True, text=True, check=False)
    assert tampered.returncode == 1
    assert "deleted: seq 5 missing" in tampered.stdout
    missing = subprocess.run(
        [*command, str(trail) + ".nope"], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("jwt-audit: no such file")


def test_rotated_files_are_read_oldest_first_whatever_the_order_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    handler = JSONLinesHandler(path, chain=True, max_bytes=4000, backup_count=0, batch_size=4)
    write_events(handler, 60)
    files = [str(path), *handler.backups()]
    assert len(files) > 5
    status, out = verify(capsys, "--file", *reversed(files))
    assert status == 0, out
    assert "seq 1-61, closed" in out
    os.remove(handler.backups()[2])  # a whole rotated file gone
    status, out = verify(capsys, "--file", *files[:1], *handler.backups())
    assert status == 1, out
    assert "deleted: seq" in out


WRITER = textwrap.dedent(
    """
    import logging, sys
    from jwt_audit_middleware import AuditLogger
    from jwt_audit_middleware.sinks import JSONLinesHandler

    path, count, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    handler = JSONLinesHandler(path, chain=True, max_bytes=4_000_000, backup_count=0)
    logger = logging.getLogger("jwt_audit")
    logger.propagate = False
    logger.addHandler(handler)
    audit = AuditLogger(logger)
    for n in range(count):
        audit.emit(audit.build_event("access", "allowed", subject=name, request_id=f"{name}-{n}"))
    handler.close()
    """
)


def test_100000_events_by_two_processes_with_rotation_verify_intact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    started = time.monotonic()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), "50000", name])
        for name in ("a", "b")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    files = [str(p) for p in tmp_path.iterdir() if p.name != "audit.jsonl.lock"]
    assert len(files) >= 5, files  # rotated several times, by both writers
    status, out = verify(capsys, "--file", *files)
    assert status == 0, out
    assert "checked 100,002 records in 2 streams" in out
    assert out.count("seq 1-50001, closed") == 2
    assert time.monotonic() - started < 60


# -- SQL tables ------------------------------------------------------------------------


class Table:
    """A chained test table on one database, dropped afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = "v_" + uuid.uuid4().hex[:12]
        self.engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        _, self.table, self.versions = event_tables(self.name)

    def write(self, count: int, **options: Any) -> None:
        write_events(SQLAuditHandler(self.url, table=self.name, chain=True, **options), count)

    def row(self, seq: int) -> dict[str, Any]:
        with self.engine.connect() as db:
            found = db.execute(sa.select(self.table).where(self.table.c.seq == seq)).one()
        return dict(found._mapping)

    def update(self, seq: int, /, **values: Any) -> None:
        with self.engine.begin() as db:
            db.execute(self.table.update().where(self.table.c.seq == seq).values(**values))

    def delete(self, *seqs: int) -> None:
        with self.engine.begin() as db:
            db.execute(self.table.delete().where(self.table.c.seq.in_(seqs)))

    def insert(self, **values: Any) -> None:
        with self.engine.begin() as db:
            db.execute(self.table.insert().values(**values))

    def drop(self) -> None:
        with self.engine.begin() as db:
            db.execute(sa.text(f"DROP TABLE IF EXISTS {self.versions.name}"))
            db.execute(sa.text(f"DROP TABLE IF EXISTS {self.name}"))
        self.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Table]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        url = server_url(request.param)
    made = Table(url)
    made.write(20)
    yield made
    made.drop()


def check(table: Table, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    return verify(capsys, "--db", table.url, "--table", table.name, *extra)


def test_an_untouched_table_is_intact(table: Table, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = check(table, capsys)
    assert status == 0, out
    closing = table.row(21)
    assert closing["event"] == "chain_closed"
    assert f"head {closing['hash']}" in out
    assert "seq 1-21, closed" in out


def test_an_edited_event_or_column_is_found(
    table: Table, capsys: pytest.CaptureFixture[str]
) -> None:
    row = table.row(7)
    assert row["outcome"] == "denied"
    table.update(7, outcome="allowed")  # what the report counts, not the event
    status, out = check(table, capsys)
    assert status == 1, out
    assert f"seq 7, row id {row['id']}: edited: column outcome is not the chained event" in out

    table.update(7, outcome="denied", data={**row["data"], "outcome": "allowed"})
    status, out = check(table, capsys)
    assert status == 1, out
    assert f"seq 7, row id {row['id']}: edited: the record does not match its hash" in out


def test_data_that_is_not_json_is_an_edit_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite stores any text (PostgreSQL's JSONB and MariaDB's JSON check refuse it)."""
    table = Table(f"sqlite:///{tmp_path / 'audit.db'}")
    table.write(5)
    row = table.row(4)
    with table.engine.begin() as db:
        db.execute(
            sa.text(f"UPDATE {table.name} SET data = :data WHERE id = :id"),
            {"data": '{"outcome": "allowed", ', "id": row["id"]},
        )
    status, out = check(table, capsys)
    table.drop()
    assert status == 1, out
    assert f"seq 4, row id {row['id']}: edited: its data is not JSON" in out


def test_a_deleted_row_is_found(table: Table, capsys: pytest.CaptureFixture[str]) -> None:
    row = table.row(11)
    table.delete(10)
    status, out = check(table, capsys)
    assert status == 1, out
    assert f"seq 11, row id {row['id']}: deleted: seq 10 missing" in out


def test_inserted_rows_are_found(table: Table, capsys: pytest.CaptureFixture[str]) -> None:
    forged = {**table.row(5)}
    del forged["id"]
    table.insert(**{**forged, "event_id": "f" * 32})
    status, out = check(table, capsys)
    assert status == 1, out
    assert "inserted: a record after the stream's closing record" in out

    with table.engine.begin() as db:
        db.execute(table.table.delete().where(table.table.c.event_id == "f" * 32))
    unchained = {**forged, "event_id": "e" * 32, "chain_id": None, "seq": None}
    table.insert(**{**unchained, "prev_hash": None, "hash": None})
    status, out = check(table, capsys)
    assert status == 1, out
    assert "inserted: a record without chain fields after chaining began" in out


def test_a_swapped_pair_of_rows_is_found_as_reordered(
    table: Table, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = table.row(12), table.row(13)
    moved = {k: v for k, v in second.items() if k != "id"}
    kept = {k: v for k, v in first.items() if k != "id"}
    table.update(13, event_id="x" * 32, seq=-13)
    table.update(12, **moved)
    with table.engine.begin() as db:
        db.execute(table.table.update().where(table.table.c.seq == -13).values(**kept))
    status, out = check(table, capsys)
    assert status == 1, out
    assert f"seq 13, row id {first['id']}: reordered: seq 12 turns up later" in out


def test_a_cut_tail_of_rows_is_not_closed(table: Table, capsys: pytest.CaptureFixture[str]) -> None:
    table.delete(19, 20, 21)
    status, out = check(table, capsys)
    assert status == 0, out
    assert "seq 1-18, NOT CLOSED" in out
    assert check(table, capsys, "--require-closed")[0] == 1


def test_a_keyed_table_and_a_wrong_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = Table(f"sqlite:///{tmp_path / 'keyed.db'}")
    made.write(10, chain_key=KEY)
    key_file = tmp_path / "chain.key"
    key_file.write_bytes(KEY)
    assert check(made, capsys, "--chain-key-file", str(key_file))[0] == 0
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"w" * 40)
    status, out = check(made, capsys, "--chain-key-file", str(wrong))
    assert status == 2, out
    assert "wrong --chain-key-file" in out
    status, out = check(made, capsys)
    assert status == 2, out
    assert "give --chain-key-file" in out
    made.drop()


def test_a_table_without_chain_columns_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("CREATE TABLE jwt_audit_events (id INTEGER PRIMARY KEY, data TEXT)"))
    engine.dispose()
    status, out = verify(capsys, "--db", url)
    assert status == 2
    assert "table jwt_audit_events has no chain columns" in out
    status, out = verify(capsys, "--db", url, "--table", "nothing_here")
    assert (status, "no table nothing_here" in out) == (2, True)
    status, out = verify(capsys, "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert status == 2
    assert "no such database file" in out


SQL_WRITER = textwrap.dedent(
    """
    import logging, sys
    from jwt_audit_middleware import AuditLogger
    from jwt_audit_middleware.sinks import SQLAuditHandler

    url, table, count, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    handler = SQLAuditHandler(url, table=table, chain=True, batch_size=100, flush_interval=0.01)
    logger = logging.getLogger("jwt_audit")
    logger.propagate = False
    logger.addHandler(handler)
    audit = AuditLogger(logger)
    for n in range(count):
        audit.emit(audit.build_event("access", "allowed", subject=name, request_id=f"{name}-{n}"))
    handler.close()
    """
)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_processes_sharing_one_table_each_keep_a_whole_stream(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}" if database == "sqlite" else server_url(database)
    made = Table(url)
    made.write(1)  # creates the table before both writers start
    try:
        writers = [
            subprocess.Popen([sys.executable, "-c", SQL_WRITER, url, made.name, "5000", name])
            for name in ("a", "b")
        ]
        assert [w.wait(timeout=120) for w in writers] == [0, 0]
        status, out = check(made, capsys)
        assert status == 0, out
        assert "checked 10,004 records in 3 streams" in out
        assert out.count("seq 1-5001, closed") == 2
    finally:
        made.drop()


class Terminal(io.StringIO):
    """stderr as a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_long_run_on_a_terminal_shows_progress_then_clears_it(trail: Path) -> None:
    err = Terminal()
    progress = Progress(err)
    progress.start(1000)
    progress.started -= 5  # a run that has lasted a while
    progress.update(250)
    assert err.getvalue().startswith("\rverify-log [#######")
    assert "25.0%" in err.getvalue()
    progress.done()
    assert err.getvalue().endswith("\r")
    quiet = io.StringIO()  # not a terminal: nothing
    args = argparse.Namespace(
        db=None,
        file=[str(trail)],
        chain_key_file=None,
        table=None,
        require_closed=False,
        json=False,
    )
    assert run(args, io.StringIO(), quiet) == 0
    assert quiet.getvalue() == ""


def test_memory_stays_flat_on_a_long_file(tmp_path: Path) -> None:
    """Checking reads line by line: 30,000 lines (about 20 MB) take no more memory than 1,000."""
    line = json.dumps({"schema": "jwt-audit/1", "event": "access", "path": "/x" * 200}) + "\n"

    def trail_of(count: int) -> Path:
        path = tmp_path / f"{count}.jsonl"
        chain = Chain()
        with path.open("wb") as handle:
            for _ in range(count // 1000):
                handle.write(chain.seal_lines([line] * 1000))
        return path

    def peak(file: Path) -> int:
        tracemalloc.start()
        try:
            result = check_files([str(file)], None, Progress(None))
            assert not result.findings
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    long, short = trail_of(30_000), trail_of(1_000)
    assert peak(long) < peak(short) + 256 * 1024
