"""The sinks under faults: close during an outage.

Issue 12, finding 2 (the batch in hand at close).  The PostgreSQL test stops
and restarts the server (``JWTAUDIT_TEST_POSTGRES_CTL``).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jwt_audit_middleware import AuditLogger
from jwt_audit_middleware.sinks import JSONLinesHandler, SQLAuditHandler

LOGGER = logging.getLogger("jwt_audit")
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def attach() -> Iterator[Callable[[logging.Handler], Any]]:
    """Attach handlers to ``jwt_audit`` for one test; detach and close them after."""
    attached: list[logging.Handler] = []

    def add(handler: logging.Handler) -> Any:
        LOGGER.addHandler(handler)
        attached.append(handler)
        return handler

    yield add
    for handler in attached:
        LOGGER.removeHandler(handler)
        handler.close()


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


def pg_ctl(action: str) -> None:
    command = os.environ["JWTAUDIT_TEST_POSTGRES_CTL"]
    subprocess.run([*shlex.split(command), action], check=True, timeout=120)


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
            wait_for(lambda: handler.stats()["retries"] >= 6, 30)  # a 1.6 s backoff
            LOGGER.removeHandler(handler)
            handler.close()
        finally:
            pg_ctl("start")
        engine = sa.create_engine(url)
        try:
            with engine.connect() as db:
                stored = [r[0] for r in db.execute(sa.text(f"SELECT subject FROM {table}"))]
        finally:
            engine.dispose()
        spilled = subjects_in(spill)
        assert sorted(stored + spilled) == sorted(subjects)
        assert len(spilled) == handler.stats()["spilled"] == 90
    finally:
        LOGGER.removeHandler(handler)
        handler.close()
        engine = sa.create_engine(url)
        with engine.begin() as db:
            db.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            db.execute(sa.text(f"DROP TABLE IF EXISTS {table}_schema"))
        engine.dispose()
