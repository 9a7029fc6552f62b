"""``jwt-audit revoke``, ``revocations`` and ``lockouts`` against a real Redis.

Redis comes from ``JWTAUDIT_TEST_REDIS_URL`` (``.ci/services.sh``): without it these
tests skip locally and fail when ``CI=true``; the error cases need no server.  Each
test works under a key prefix of its own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jwt_audit_middleware.cli import main
from jwt_audit_middleware.state import Probe, Thresholds

IN_CI = os.environ.get("CI", "").lower() == "true"
LOCKING = Thresholds(60, 2, 2, 3, 300)


@pytest.fixture
def redis_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, Any]]:
    """The URL, a fresh key prefix, and a store on them (to look behind the CLI)."""
    url = os.environ.get("JWTAUDIT_TEST_REDIS_URL")
    if not url:
        if IN_CI:
            pytest.fail("JWTAUDIT_TEST_REDIS_URL is not set; CI must run .ci/services.sh first")
        pytest.skip("JWTAUDIT_TEST_REDIS_URL not set (run .ci/services.sh)")
    pytest.importorskip("redis")
    from jwt_audit_middleware.state_redis import RedisStore

    prefix = f"jwt_audit_test:{uuid.uuid4().hex[:12]}:"
    store = RedisStore(url, prefix=prefix, timeout=2.0)
    monkeypatch.setenv("JWT_AUDIT_STATE_URL", url)
    try:
        yield url, prefix, store
    finally:
        for key in store.client.scan_iter(match=prefix + "*"):
            store.client.delete(key)
        store.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_revoke_a_jti(redis_env: tuple[str, str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _, prefix, store = redis_env
    code, out, err = run(
        capsys, "revoke", "--jti", "abc-123", "--until", "2h", "--key-prefix", prefix
    )
    assert (code, err) == (0, "")
    assert out.startswith("revoked jti abc-123 until 20")
    now = time.time()
    assert store.probe(Probe(now=now, client_ip=None, jti="abc-123"), None).revoked
    assert not store.probe(
        Probe(now=now + 2 * 3600 + 1, client_ip=None, jti="abc-123"), None
    ).revoked
    (entry,) = store.revocations(now)
    assert entry.kind == "jti"
    assert entry.until == pytest.approx(now + 7200, abs=5)


def test_revoke_a_subject_with_the_defaults(
    redis_env: tuple[str, str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, prefix, store = redis_env
    before = time.time()
    code, out, _ = run(capsys, "revoke", "--subject", "alice", "--key-prefix", prefix)
    assert code == 0
    assert "tokens issued before" in out
    older = Probe(now=time.time(), client_ip=None, subject="alice", issued_at=before - 60)
    newer = Probe(now=time.time(), client_ip=None, subject="alice", issued_at=time.time() + 1)
    assert store.probe(older, None).revoked
    assert not store.probe(newer, None).revoked
    (entry,) = store.revocations(time.time())
    assert entry.until == pytest.approx(before + 30 * 86400, abs=5)  # the documented default
    ttl = store.client.pttl(prefix + "rv:sub:alice")
    assert 29 * 86400 * 1000 < ttl <= 30 * 86400 * 1000


def test_revocations_listed_as_a_table_and_as_json(
    redis_env: tuple[str, str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, prefix, _ = redis_env
    assert run(capsys, "revocations", "--key-prefix", prefix)[1] == "no revocations in force\n"
    run(capsys, "revoke", "--jti", "j-1", "--until", "2999-01-01T00:00:00Z", "--key-prefix", prefix)
    run(capsys, "revoke", "--subject", "bob", "--until", "never", "--key-prefix", prefix)
    code, out, _ = run(capsys, "revocations", "--key-prefix", prefix)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "VALUE", "REVOKED", "AT", "UNTIL"]
    assert any(line.startswith("jti ") and "2999-01-01T00:00:00.000Z" in line for line in lines)
    assert any(line.startswith("subject") and line.endswith("never") for line in lines)
    code, out, _ = run(capsys, "revocations", "--json", "--key-prefix", prefix)
    rows = {(row["kind"], row["value"]): row for row in json.loads(out)}
    assert set(rows) == {("jti", "j-1"), ("subject", "bob")}
    assert rows["subject", "bob"]["until"] is None
    assert rows["jti", "j-1"]["until"] == "2999-01-01T00:00:00.000Z"


def lock(store: Any, ip: str | None = "203.0.113.7", subject: str | None = None) -> None:
    now = time.time()
    for i in range(2):
        probe = Probe(now=now + i * 0.01, client_ip=ip, subject=subject, denial="expired")
        store.probe(probe, LOCKING)


def test_lockouts_listed_and_cleared(
    redis_env: tuple[str, str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, prefix, store = redis_env
    assert run(capsys, "lockouts", "--key-prefix", prefix)[1] == "no lockouts in force\n"
    lock(store)
    lock(store, ip=None, subject="carol")
    code, out, _ = run(capsys, "lockouts", "--key-prefix", prefix)
    assert code == 0
    assert out.splitlines()[0].split() == ["KEY", "UNTIL", "LEFT"]
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"ip:203.0.113.7", "subject:carol"}
    rows = json.loads(run(capsys, "lockouts", "--json", "--key-prefix", prefix)[1])
    assert {row["key"] for row in rows} == {"ip:203.0.113.7", "subject:carol"}
    assert all(290 <= row["seconds_left"] <= 300 for row in rows)

    code, out, _ = run(capsys, "lockouts", "--clear", "ip:203.0.113.7", "--key-prefix", prefix)
    assert (code, out) == (0, "cleared the lockout of ip 203.0.113.7\n")
    assert (
        store.probe(Probe(now=time.time(), client_ip="203.0.113.7"), LOCKING).ip_locked_until
        is None
    )
    code, out, _ = run(capsys, "lockouts", "--clear", "ip:203.0.113.7", "--key-prefix", prefix)
    assert (code, out) == (1, "no lockout of ip 203.0.113.7\n")
    code, _, err = run(capsys, "lockouts", "--clear", "token:x", "--key-prefix", prefix)
    assert code == 2
    assert "ip:ADDRESS or subject:NAME" in err
    code, out, _ = run(capsys, "lockouts", "--clear-all", "--key-prefix", prefix)
    assert (code, out) == (0, "cleared 1 lockout(s)\n")
    assert store.lockouts(time.time()) == []


def test_ipv6_lockout_key(
    redis_env: tuple[str, str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _, prefix, store = redis_env
    lock(store, ip="2001:db8::7")
    code, out, _ = run(capsys, "lockouts", "--clear", "ip:2001:db8::7", "--key-prefix", prefix)
    assert (code, out) == (0, "cleared the lockout of ip 2001:db8::7\n")


# -- clear errors, no server needed ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [["revocations"], ["lockouts"], ["revoke", "--jti", "x"]])
def test_no_state_url_is_a_clear_error(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JWT_AUDIT_STATE_URL", raising=False)
    code, out, err = run(capsys, *command)
    assert (code, out) == (2, "")
    assert err.startswith("jwt-audit: no state store: give --state-url")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["revoke", "--jti", "x", "--until", "soon"], "--until 'soon': give a time"),
        (["revoke", "--jti", "x", "--until", "2001-01-01"], "is not in the future"),
        (["revoke", "--jti", "x", "--until", "never"], "--until 'never'"),
        (["lockouts", "--state-url", "http://cache:6379"], "expected redis://"),
    ],
)
def test_bad_options(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("JWT_AUDIT_STATE_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_unreachable_store_one_line_no_password_no_traceback() -> None:
    pytest.importorskip("redis")
    url = f"redis://admin:hunter2-secret@127.0.0.1:{free_port()}/0"
    for command in (["revocations"], ["lockouts", "--clear-all"], ["revoke", "--subject", "s"]):
        done = subprocess.run(
            [sys.executable, "-m", "jwt_audit_middleware.cli", *command, "--state-url", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr.splitlines() == [
            f"jwt-audit: state store at 127.0.0.1:{url.rsplit(':', 1)[1].split('/', maxsplit=1)[0]}"
            " is unreachable (connection refused)"
        ]
        assert "hunter2" not in done.stderr
