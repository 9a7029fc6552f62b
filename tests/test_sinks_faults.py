"""The sinks under faults: close during an outage, a full disk, a hostile spill file.

Issue 12, findings 2 (the batch in hand at close), 3 (a write cut short by a
full disk) and 4 (the spill file's place and how it is opened).  The
PostgreSQL test stops and restarts the server (``JWTAUDIT_TEST_POSTGRES_CTL``);
the full-disk test mounts a small tmpfs, and skips where it cannot.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_sinks_sql import pg_ctl

from jwt_audit_middleware import AuditLogger
from jwt_audit_middleware.sinks import JSONLinesHandler, SQLAuditHandler

LOGGER = logging.getLogger("jwt_audit")
IN_CI = os.environ.get("CI", "").lower() == "true"


def emit(count: int, prefix: str = "user") -> list[str]:
    audit = AuditLogger()
    subjects = [f"{prefix}{i}" for i in range(count)]
    for subject in subjects:
        audit.login_succeeded(subject)
    return subjects


def subjects_in(path: Path) -> list[str]:
    """The subject of every line; each line must be whole and valid JSON."""
    text = path.read_text(encoding="utf-8")
    assert not text or text.endswith("\n")
    return [json.loads(line)["subject"] for line in text.splitlines()]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# -- finding 2: close() during an outage keeps the batch in hand ------------------------


class FlakyFile(JSONLinesHandler):
    """Batches fail while ``down`` is set; ``hold`` makes one write wait for ``release``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.down = threading.Event()
        self.hold = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()
        super().__init__(*args, **kwargs)

    def write_batch(self, prepared: Any) -> None:
        if self.hold.is_set():
            self.holding.set()
            self.release.wait(30)
        if self.down.is_set():
            raise ConnectionError("the store is down")
        super().write_batch(prepared)


def flaky(path: Path, **options: Any) -> FlakyFile:
    return FlakyFile(path, batch_size=25, flush_interval=0.01, **options)


def test_close_during_a_long_backoff_spills_the_batch_in_hand(tmp_path: Path, attach: Any) -> None:
    """The writer sleeps 1.6 s between attempts; close() gives it 1 s: nothing is lost."""
    path = tmp_path / "audit.jsonl"
    handler = attach(flaky(path, close_timeout=0))
    handler.down.set()
    subjects = emit(60)
    wait_for(lambda: handler.stats()["retries"] >= 6)  # now in a 1.6 s backoff
    handler.close()
    assert sorted(subjects_in(path)) == sorted(subjects)
    assert handler.stats()["spilled"] == 60
    assert handler.stats()["written"] == 0
    assert handler.stats()["queued"] == 0


def test_a_backoff_wakes_on_close_and_the_outage_ending_writes_all(
    tmp_path: Path, attach: Any
) -> None:
    path = tmp_path / "audit.jsonl"
    handler = attach(flaky(path, close_timeout=10))
    handler.down.set()
    subjects = emit(60)
    wait_for(lambda: handler.stats()["retries"] >= 6)  # now in a 1.6 s backoff
    threading.Timer(0.2, handler.down.clear).start()  # the outage ends during close
    started = time.monotonic()
    handler.close()
    assert time.monotonic() - started < 1.2  # not the rest of the 1.6 s
    assert sorted(subjects_in(path)) == sorted(subjects)
    assert handler.stats()["spilled"] == 0
    assert handler.stats()["written"] == 60


@pytest.mark.parametrize("fails", [True, False], ids=["write-fails", "write-succeeds"])
def test_a_write_outlasting_close_is_written_or_spilled_exactly_once(
    tmp_path: Path, attach: Any, fails: bool
) -> None:
    """close() stops waiting while a write still runs: that batch stays the writer's."""
    path = tmp_path / "audit.jsonl"
    handler = attach(flaky(path, close_timeout=0))
    handler.hold.set()
    if fails:
        handler.down.set()
    subjects = emit(60)
    assert handler.holding.wait(10)
    writer = handler._thread
    assert writer is not None
    handler.close()  # gives up after 1 s: 35 queued records spilled, 25 in the write
    assert handler.stats()["spilled"] == 35
    handler.release.set()
    writer.join(10)
    assert not writer.is_alive()
    assert sorted(subjects_in(path)) == sorted(subjects)
    stats = handler.stats()
    assert (stats["written"], stats["spilled"]) == ((0, 60) if fails else (25, 35))


def test_close_during_a_postgres_outage_loses_nothing(tmp_path: Path) -> None:
    """Issue 12 finding 2: PostgreSQL down, close(): every event stored or spilled, once."""
    url = os.environ.get("JWTAUDIT_TEST_POSTGRES_URL")
    if not url or not os.environ.get("JWTAUDIT_TEST_POSTGRES_CTL"):
        if IN_CI:
            pytest.fail("JWTAUDIT_TEST_POSTGRES_URL / _CTL are not set")
        pytest.skip("JWTAUDIT_TEST_POSTGRES_URL / _CTL not set (run .ci/services.sh)")
    table = "t_" + uuid.uuid4().hex[:12]
    spill = tmp_path / "spill.jsonl"
    handler = SQLAuditHandler(
        url,
        table=table,
        batch_size=25,
        flush_interval=0.01,
        close_timeout=0,
        spill_path=spill,
    )
    LOGGER.addHandler(handler)
    subjects: list[str] = []
    try:
        subjects += emit(10, "before")
        assert handler.drain(30)  # table created, 10 rows
        pg_ctl("stop")
        try:
            subjects += emit(90, "during")
            # in a 1.6 s backoff (unless someone sharing the server started it again)
            wait_for(lambda: handler.stats()["retries"] >= 6 or handler.stats()["written"] > 10)
            writer = handler._thread
            LOGGER.removeHandler(handler)
            handler.close()
            assert writer is not None
            assert not writer.is_alive()  # nothing left in the writer's hands
            # still down when a writer asleep in its backoff would wake: as at
            # process exit, nobody would write what it held
            time.sleep(2.0)
        finally:
            pg_ctl("start")
        engine = sa.create_engine(url)
        try:
            with engine.connect() as db:
                stored = [r[0] for r in db.execute(sa.text(f"SELECT subject FROM {table}"))]
        finally:
            engine.dispose()
        spilled = subjects_in(spill) if spill.exists() else []
        assert sorted(stored + spilled) == sorted(subjects)  # each once, none lost
        assert len(spilled) == handler.stats()["spilled"]
    finally:
        LOGGER.removeHandler(handler)
        handler.close()
        engine = sa.create_engine(url)
        with engine.begin() as db:
            db.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            db.execute(sa.text(f"DROP TABLE IF EXISTS {table}_schema"))
        engine.dispose()


# -- finding 3: a write cut short by a full disk ------------------------------------------


class CutWrites:
    """``os.write`` on one file: a write cut at ``cut`` bytes, then ENOSPC ``failures`` times."""

    def __init__(self, path: Path, cut: int, failures: int = 3) -> None:
        self.path = path
        self.cut = cut
        self.failures = failures
        self.real = os.write
        self.cuts = 0
        self.before_enospc: Callable[[], None] = lambda: None

    def ours(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        state = os.fstat(fd)
        return (state.st_ino, state.st_dev) == (on_disk.st_ino, on_disk.st_dev)

    def __call__(self, fd: int, data: Any) -> int:
        if self.failures and self.ours(fd):
            if self.cuts == 0 and len(data) > self.cut:
                self.cuts += 1
                return self.real(fd, bytes(data[: self.cut]))
            if self.cuts:
                self.failures -= 1
                self.before_enospc()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, data)


def cut_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: Any) -> CutWrites:
    path = tmp_path / "audit.jsonl"
    cut = CutWrites(path, **options)
    monkeypatch.setattr(os, "write", cut)
    return cut


def test_a_write_cut_by_enospc_resumes_without_duplicates_or_broken_lines(
    tmp_path: Path, attach: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut = cut_file(tmp_path, monkeypatch, cut=5000)
    handler = attach(JSONLinesHandler(cut.path, batch_size=100, flush_interval=0.01))
    subjects = emit(60)
    handler.close()
    assert cut.cuts == 1
    assert cut.failures == 0
    assert handler.stats()["retries"] >= 3
    assert sorted(subjects_in(cut.path)) == sorted(subjects)


def test_a_cut_line_that_cannot_be_truncated_is_completed_in_place(
    tmp_path: Path, attach: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append-only file, say: the retry writes the rest of the cut line, from its byte."""

    def refuse(fd: int, length: int) -> None:
        raise PermissionError(errno.EPERM, "append-only")

    monkeypatch.setattr(os, "ftruncate", refuse)
    cut = cut_file(tmp_path, monkeypatch, cut=5000)
    handler = attach(JSONLinesHandler(cut.path, batch_size=100, flush_interval=0.01))
    subjects = emit(60)
    handler.close()
    assert cut.cuts == 1
    assert sorted(subjects_in(cut.path)) == sorted(subjects)


@pytest.mark.parametrize("ends", ["\n", ""], ids=["whole-line", "open-line"])
def test_a_cut_line_another_writer_appended_behind_is_left_alone(
    tmp_path: Path, attach: Any, monkeypatch: pytest.MonkeyPatch, ends: str
) -> None:
    """Another process appended behind the piece: it is a broken line; nothing doubles."""
    cut = cut_file(tmp_path, monkeypatch, cut=5000, failures=1)
    other = json.dumps({"subject": "other-process"}) + ends

    def other_process_appends() -> None:
        fd = os.open(cut.path, os.O_WRONLY | os.O_APPEND)
        try:
            cut.real(fd, other.encode())
        finally:
            os.close(fd)

    cut.before_enospc = other_process_appends
    handler = attach(JSONLinesHandler(cut.path, batch_size=100, flush_interval=0.01))
    subjects = emit(60)
    handler.close()
    lines = cut.path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert all(line.endswith("\n") for line in lines)  # the retry started a new line
    parsed, broken = [], []
    for line in lines:
        try:
            parsed.append(json.loads(line)["subject"])
        except ValueError:
            broken.append(line)
    assert broken == [broken[0]]  # the piece, glued to the other process's line
    assert broken[0].endswith(other.rstrip("\n") + "\n")
    assert sorted(parsed) == sorted(subjects)


def test_a_spill_cut_by_enospc_sends_only_the_rest_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = cut_file(tmp_path, monkeypatch, cut=5000, failures=1)
    handler = JSONLinesHandler(cut.path)
    lines = []
    for i in range(30):
        record = logging.LogRecord("jwt_audit", logging.INFO, __file__, 0, "", None, None)
        record.jwt_audit = AuditLogger().build_event(
            "login_succeeded", "allowed", subject=f"user{i}"
        )
        lines.append(handler.enqueued(record))
    try:
        handler.spill(lines)  # the request thread writing through a full queue
    finally:
        handler.close()
    in_file = subjects_in(cut.path)
    on_stderr = [json.loads(line)["subject"] for line in capsys.readouterr().err.splitlines()]
    assert in_file
    assert sorted(in_file + on_stderr) == sorted(f"user{i}" for i in range(30))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_file_system_leaves_whole_lines_and_each_once(small_fs: Path, attach: Any) -> None:
    filler = small_fs / "filler"
    free = os.statvfs(small_fs)
    filler.write_bytes(b"x" * (free.f_bavail * free.f_frsize - 10_000))  # ~10 kB left
    path = small_fs / "audit.jsonl"
    handler = attach(JSONLinesHandler(path, batch_size=100, flush_interval=0.01))
    subjects = emit(60)  # ~25 kB of lines
    wait_for(lambda: handler.stats()["retries"] >= 2)
    partial = path.read_bytes()
    assert partial  # some lines went in before the disk filled
    assert partial.endswith(b"\n")  # and no piece of a line stayed behind
    filler.unlink()  # room again
    handler.close()
    assert sorted(subjects_in(path)) == sorted(subjects)
    assert handler.stats()["spilled"] == 0


# -- finding 4: the spill file is private ------------------------------------------------

SINK_LOGGER = "jwt_audit_middleware.sinks"
# nothing listens here: a database that is down
DOWN_URL = "postgresql://audit:pw@127.0.0.1:1/audit"


def down_sql(attach: Any, **options: Any) -> SQLAuditHandler:
    """A SQL sink whose database is unreachable: close() spills everything."""
    handler = SQLAuditHandler(DOWN_URL, close_timeout=0, max_retry_delay=0.05, **options)
    return attach(handler)  # type: ignore[no-any-return]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_default_spill_file_is_private_and_not_in_tmp(
    tmp_path: Path, attach: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    handler = down_sql(attach)
    expected = state / "jwt-audit" / "jwt-audit-spill.jsonl"
    assert handler.spill_path == str(expected)
    subjects = emit(5)
    old_umask = os.umask(0)  # a careless umask must not make the spill readable
    try:
        handler.close()
    finally:
        os.umask(old_umask)
    assert sorted(subjects_in(expected)) == sorted(subjects)
    assert mode_of(expected.parent) == 0o700
    assert mode_of(expected) == 0o600


def test_without_xdg_state_home_the_spill_goes_under_the_home_directory(
    tmp_path: Path, attach: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    handler = down_sql(attach)
    assert handler.spill_path == str(tmp_path / ".local/state/jwt-audit/jwt-audit-spill.jsonl")
    assert not handler.spill_path.startswith(tempfile.gettempdir() + "/jwt-audit-spill")


@pytest.mark.parametrize("problem", ["open-to-others", "symlink"])
def test_a_default_directory_that_is_not_private_is_not_used(
    tmp_path: Path,
    attach: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    problem: str,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    planted = state / "jwt-audit"
    if problem == "symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        planted.symlink_to(elsewhere)
    else:
        planted.mkdir()
        planted.chmod(0o777)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    handler = down_sql(attach)
    subjects = emit(3)
    with caplog.at_level(logging.WARNING, logger=SINK_LOGGER):
        handler.close()
    spill = Path(handler.spill_path)
    assert spill.parent != planted
    assert spill.parent.name.startswith("jwt-audit-")  # a fresh mkdtemp directory
    assert mode_of(spill.parent) == 0o700
    assert sorted(subjects_in(spill)) == sorted(subjects)
    assert list(planted.iterdir()) == []
    assert any(str(planted) in r.getMessage() for r in caplog.records)
    os.remove(spill)
    os.rmdir(spill.parent)


def plant(kind: str, path: Path, tmp_path: Path) -> Path:
    """A spill path someone else prepared; returns the file that must stay untouched."""
    target = tmp_path / "stolen.jsonl"
    target.touch()
    if kind == "symlink":
        path.symlink_to(target)
        return target
    if kind == "world-readable":
        path.touch()
        path.chmod(0o666)
    elif kind == "group-readable":
        path.touch()
        path.chmod(0o640)
    elif kind == "another-user":
        if os.geteuid() != 0:
            pytest.skip("needs root to make a file of another user")
        path.touch()
        path.chmod(0o600)
        os.chown(path, 65534, 65534)
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir(mode=0o700)
    return path


@pytest.mark.parametrize(
    "kind",
    ["symlink", "world-readable", "group-readable", "another-user", "fifo", "directory"],
)
def test_a_spill_file_that_is_not_private_is_refused_and_the_app_unharmed(
    tmp_path: Path,
    attach: Any,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    spill = tmp_path / "spill.jsonl"
    untouched = plant(kind, spill, tmp_path)
    # a full queue spills on the request thread: it must not raise there either
    handler = down_sql(attach, spill_path=spill, queue_size=2, batch_size=1, block_timeout=0)
    with caplog.at_level(logging.ERROR, logger=SINK_LOGGER):
        emitting = threading.Thread(target=emit, args=(20,), daemon=True)
        emitting.start()
        emitting.join(10)
        assert not emitting.is_alive()  # a FIFO would hang an open without O_NONBLOCK
        closing = threading.Thread(target=handler.close, daemon=True)
        closing.start()
        closing.join(10)
        assert not closing.is_alive()
    if untouched.is_file():
        assert untouched.read_bytes() == b""
    on_stderr = [json.loads(line)["subject"] for line in capsys.readouterr().err.splitlines()]
    assert sorted(on_stderr) == sorted(f"user{i}" for i in range(20))  # none lost
    messages = [r.getMessage() for r in caplog.records if r.name == SINK_LOGGER]
    assert any("refusing to spill" in m and str(spill) in m for m in messages)
