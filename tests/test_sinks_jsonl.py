"""JSONLinesHandler: every event as one line, under load, rotation, several processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from jwt_audit_middleware import AuditLogger, JSONFormatter, JWTAuditMiddleware
from jwt_audit_middleware.sinks import JSONLinesHandler
from jwt_audit_middleware.testing import SigningKey

LOGGER = logging.getLogger("jwt_audit")


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def burst(key: SigningKey, count: int) -> list[str]:
    """``count`` concurrent requests through the ASGI middleware; their request ids."""
    app = JWTAuditMiddleware(hello, **key.options(), exempt_paths=["/health"])
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 1234))
    tokens = [key.token(sub=f"user-{i % 7}") for i in range(10)]
    ids = [f"req-{i}" for i in range(count)]

    async def one(i: int) -> int:
        headers = {"X-Request-ID": ids[i]}
        if i % 3:
            headers["Authorization"] = f"Bearer {tokens[i % 10]}"
        response = await http.get("/orders" if i % 5 else "/health", headers=headers)
        return response.status_code

    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        statuses = await asyncio.gather(*(one(i) for i in range(count)))
    assert set(statuses) == {200, 401}
    return ids


def read_lines(*paths: str | Path) -> list[dict[str, Any]]:
    events = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                assert line.endswith("\n")
                events.append(json.loads(line))
    return events


def test_2000_concurrent_requests_leave_exactly_2000_lines(
    tmp_path: Path, keys: dict[str, SigningKey], attach: Any
) -> None:
    path = tmp_path / "audit.jsonl"
    handler = attach(JSONLinesHandler(path, batch_size=128, flush_interval=0.05))
    ids = asyncio.run(burst(keys["HS256"], 2000))
    handler.close()
    events = read_lines(path)
    assert len(events) == 2000
    assert sorted(e["request_id"] for e in events) == sorted(ids)
    assert {e["schema"] for e in events} == {"jwt-audit/1"}
    assert {e["logger"] for e in events} == {"jwt_audit"}
    assert handler.stats()["written"] == 2000
    assert handler.stats()["spilled"] == 0
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_flush_writes_what_was_queued_before_it(tmp_path: Path, attach: Any) -> None:
    path = tmp_path / "audit.jsonl"
    handler = attach(JSONLinesHandler(path, batch_size=10_000, flush_interval=60))
    audit = AuditLogger()
    for i in range(10):
        audit.login_succeeded(f"user{i}", client_ip="192.0.2.1")
    assert path.read_text() == ""  # not a full batch, interval not reached
    handler.flush()
    assert [e["subject"] for e in read_lines(path)] == [f"user{i}" for i in range(10)]


def test_plain_records_are_written_too(tmp_path: Path, attach: Any) -> None:
    path = tmp_path / "audit.jsonl"
    handler = attach(JSONLinesHandler(path))
    logging.getLogger("jwt_audit.internal").error("bug in %s", "hook")
    handler.close()
    (line,) = read_lines(path)
    assert line["message"] == "bug in hook"
    assert line["level"] == "ERROR"


def test_size_rotation_keeps_every_line(tmp_path: Path, attach: Any) -> None:
    path = tmp_path / "audit.jsonl"
    handler = attach(JSONLinesHandler(path, max_bytes=20_000, backup_count=0, batch_size=20))
    audit = AuditLogger()
    for i in range(500):
        audit.login_failed(f"user{i}", reason="bad_password", client_ip="192.0.2.1")
        if i % 50 == 0:
            handler.flush()
    handler.close()
    backups = handler.backups()
    assert len(backups) >= 5
    events = read_lines(*backups, path)
    assert [e["subject"] for e in events] == [f"user{i}" for i in range(500)]
    for backup in backups:
        assert os.path.getsize(backup) <= 20_000


def test_backup_count_prunes_oldest(tmp_path: Path, attach: Any) -> None:
    path = tmp_path / "audit.jsonl"
    handler = attach(JSONLinesHandler(path, max_bytes=2_000, backup_count=2, batch_size=5))
    audit = AuditLogger()
    for i in range(200):
        audit.login_succeeded(f"user{i}")
        if i % 5 == 4:
            handler.flush()
    handler.close()
    backups = handler.backups()
    assert len(backups) == 2
    remaining = read_lines(*backups, path)
    assert remaining[-1]["subject"] == "user199"  # the newest are kept


def test_time_rotation(tmp_path: Path, attach: Any) -> None:
    path = tmp_path / "audit.jsonl"
    handler = attach(JSONLinesHandler(path, when="S", interval=1, backup_count=0))
    audit = AuditLogger()
    audit.login_succeeded("before")
    handler.flush()
    time.sleep(1.1)
    audit.login_succeeded("after")
    handler.close()
    (backup,) = handler.backups()
    assert [e["subject"] for e in read_lines(backup)] == ["before"]
    assert [e["subject"] for e in read_lines(path)] == ["after"]


def test_reopens_after_external_rotation(tmp_path: Path, attach: Any) -> None:
    path = tmp_path / "audit.jsonl"
    handler = attach(JSONLinesHandler(path))
    audit = AuditLogger()
    audit.login_succeeded("one")
    handler.flush()
    os.rename(path, tmp_path / "audit.jsonl.1")  # what logrotate does
    audit.login_succeeded("two")
    handler.close()
    assert [e["subject"] for e in read_lines(tmp_path / "audit.jsonl.1")] == ["one"]
    assert [e["subject"] for e in read_lines(path)] == ["two"]


WRITER = textwrap.dedent(
    """
    import logging, sys
    from jwt_audit_middleware import AuditLogger
    from jwt_audit_middleware.sinks import JSONLinesHandler
    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logger = logging.getLogger("jwt_audit")
    logger.addHandler(JSONLinesHandler(path, max_bytes=200_000, backup_count=0, batch_size=50))
    audit = AuditLogger()
    for i in range(count):
        audit.login_succeeded(f"{name}-{i}", client_ip="192.0.2.1", user_agent="x" * 200)
    # no close(): process exit must flush
    """
)


def test_several_processes_append_and_rotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    processes = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{n}", "1500"])
        for n in range(4)
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0
    backups = sorted(p for p in tmp_path.iterdir() if p.name.startswith("audit.jsonl."))
    backups = [p for p in backups if not p.name.endswith(".lock")]
    assert backups  # it did rotate
    events = read_lines(*backups, path)  # every line whole and valid JSON
    subjects = [e["subject"] for e in events]
    assert len(subjects) == 6000
    assert set(subjects) == {f"p{n}-{i}" for n in range(4) for i in range(1500)}


class SlowDisk(JSONLinesHandler):
    """A handler whose background writes (only) wait: a stalled disk."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.go = threading.Event()
        super().__init__(*args, **kwargs)

    def write_batch(self, prepared: Any) -> None:
        self.go.wait(30)
        super().write_batch(prepared)


def test_full_queue_blocks_briefly_then_writes_through(tmp_path: Path, attach: Any) -> None:
    path = tmp_path / "audit.jsonl"
    handler = SlowDisk(path, queue_size=20, batch_size=5, flush_interval=0.01, block_timeout=0.05)
    attach(handler)
    audit = AuditLogger()
    started = time.perf_counter()
    for i in range(200):
        audit.login_succeeded(f"user{i}")
    elapsed = time.perf_counter() - started
    # one wait of block_timeout, then straight to the file while the queue stays full
    assert elapsed < 2.0
    spilled = handler.stats()["spilled"]
    assert 150 <= spilled < 200
    handler.go.set()
    handler.close()
    events = read_lines(path)
    assert sorted(e["subject"] for e in events) == sorted(f"user{i}" for i in range(200))
    assert handler.stats()["written"] + handler.stats()["spilled"] == 200


def test_a_line_is_the_event_as_it_was_logged(tmp_path: Path, attach: Any) -> None:
    """Formatted when logged: a later change to the event dict does not reach the file."""
    path = tmp_path / "audit.jsonl"
    handler = attach(JSONLinesHandler(path, flush_interval=0.01))
    event = AuditLogger().login_succeeded("alice")
    event["subject"] = "mallory"
    handler.flush()
    assert [e["subject"] for e in read_lines(path)] == ["alice"]


class Broken(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        raise RuntimeError("formatter bug")


FormattedFile = Callable[[logging.Formatter], tuple[Path, JSONLinesHandler]]


@pytest.fixture
def formatted_file(tmp_path: Path, attach: Any) -> FormattedFile:
    """Attach a JSON-lines handler with the given formatter; its file and the handler."""

    def make(formatter: logging.Formatter) -> tuple[Path, JSONLinesHandler]:
        path = tmp_path / "audit.jsonl"
        handler = JSONLinesHandler(path, flush_interval=0.01)
        handler.setFormatter(formatter)
        attach(handler)
        return path, handler

    return make


@pytest.fixture
def broken_formatter(formatted_file: FormattedFile) -> tuple[Path, JSONLinesHandler]:
    """A JSON-lines handler (and its file) whose own formatter always raises."""
    return formatted_file(Broken())


def test_a_failing_formatter_is_reported_and_the_event_still_written(
    broken_formatter: tuple[Path, JSONLinesHandler], capsys: pytest.CaptureFixture[str]
) -> None:
    path, handler = broken_formatter
    AuditLogger().login_failed("bob", reason="bad_password")
    handler.flush()
    (event,) = read_lines(path)
    assert (event["event"], event["subject"], event["reason"]) == (
        "login_failed",
        "bob",
        "bad_password",
    )
    assert "formatter bug" in capsys.readouterr().err  # logging's handleError report


def test_an_event_nothing_can_format_is_reported_never_raised(
    broken_formatter: tuple[Path, JSONLinesHandler], capsys: pytest.CaptureFixture[str]
) -> None:
    path, handler = broken_formatter
    looped: dict[str, Any] = {"event": "app_event"}
    looped["self"] = looped  # JSON has no way to write this
    audit = AuditLogger()
    audit.emit(looped)  # the app's call returns as with any logging handler
    audit.login_succeeded("alice")
    handler.flush()
    assert [e["subject"] for e in read_lines(path)] == ["alice"]
    assert "Circular reference" in capsys.readouterr().err


class OneAtATime(logging.Formatter):
    """Counts how many threads are inside ``format`` at once."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = self.peak = 0
        self.json = JSONFormatter()

    def format(self, record: logging.LogRecord) -> str:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        time.sleep(0.001)  # lets another thread in, were there no lock
        self.inside -= 1
        return self.json.format(record)


def test_a_custom_formatter_runs_under_the_handler_lock(formatted_file: FormattedFile) -> None:
    """As ``logging.Handler.handle`` would run it: formatters need not be thread-safe."""
    formatter = OneAtATime()
    path, handler = formatted_file(formatter)
    audit = AuditLogger()

    def log_some(n: int) -> None:
        for i in range(20):
            audit.login_succeeded(f"t{n}-{i}")

    threads = [threading.Thread(target=log_some, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handler.flush()
    assert len(read_lines(path)) == 160
    assert formatter.peak == 1


def test_records_after_close_are_written_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    handler = JSONLinesHandler(path)
    handler.close()
    record = logging.LogRecord("jwt_audit", logging.INFO, __file__, 1, "late", None, None)
    handler.handle(record)
    assert read_lines(path)[0]["message"] == "late"


def test_dictconfig_by_dotted_path(tmp_path: Path) -> None:
    import logging.config

    path = tmp_path / "audit.jsonl"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "audit": {
                    "class": "jwt_audit_middleware.sinks.JSONLinesHandler",
                    "path": str(path),
                    "max_bytes": 10_000_000,
                }
            },
            "loggers": {"jwt_audit": {"handlers": ["audit"], "level": "INFO"}},
        }
    )
    try:
        (handler,) = [h for h in LOGGER.handlers if isinstance(h, JSONLinesHandler)]
        AuditLogger().login_failed("mallory", reason="locked", client_ip="203.0.113.9")
        handler.flush()
        (event,) = read_lines(path)
        assert (event["event"], event["outcome"], event["reason"]) == (
            "login_failed",
            "denied",
            "locked",
        )
    finally:
        for h in list(LOGGER.handlers):
            if isinstance(h, JSONLinesHandler):
                LOGGER.removeHandler(h)
                h.close()
        LOGGER.addHandler(logging.NullHandler())


def test_bad_options_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="when"):
        JSONLinesHandler(tmp_path / "a.jsonl", when="fortnight")
    with pytest.raises(ValueError, match="fsync"):
        JSONLinesHandler(tmp_path / "a.jsonl", fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        JSONLinesHandler(tmp_path / "missing" / "a.jsonl")


def test_core_import_does_not_load_sqlalchemy() -> None:
    code = (
        "import sys, jwt_audit_middleware, jwt_audit_middleware.sinks as s; "
        "assert s.JSONLinesHandler; print('sqlalchemy' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_an_unwritable_file_costs_requests_nothing_and_loses_no_event(
    tmp_path: Path, attach: Any
) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    handler = attach(JSONLinesHandler(directory / "audit.jsonl", flush_interval=0.02))
    shutil.rmtree(directory)  # the log volume goes away under the running service
    key = SigningKey.generate("HS256")
    ids = asyncio.run(burst(key, 200))  # asserts every request was answered 200/401
    deadline = time.monotonic() + 5
    while handler.stats()["retries"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handler.stats()["retries"] > 0  # it failed, kept the records and retried
    directory.mkdir()  # the outage ends
    handler.close()
    assert sorted(e["request_id"] for e in read_lines(directory / "audit.jsonl")) == sorted(ids)
