"""``jwt-audit demo --abuse``: the real command, as a user runs it (issue 15)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

#: Three base64url segments, as a JWT: the demo never prints one.
JWT_LIKE = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def run_demo(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jwt_audit_middleware.cli", "demo", "--abuse", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_demo_abuse_shows_the_alert_the_lockout_the_revocation_and_the_report(
    tmp_path: Path,
) -> None:
    db = tmp_path / "audit.db"
    result = run_demo("--db", f"sqlite:///{db}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    events: list[dict[str, Any]] = [
        json.loads(line) for line in out.splitlines() if line.startswith("{")
    ]

    # one event per request, in order, and the alerts between them
    answers = [(e["status"], e["reason"]) for e in events if e["event"] in ("access", "denial")]
    assert answers == [
        (200, None),
        *[(401, "bad_signature")] * 5,
        (429, "locked_out"),
        (200, None),
        (401, "revoked"),
    ]
    burst, revoked = [e for e in events if e["event"] == "alert"]
    assert (burst["outcome"], burst["reason"], burst["client_ip"]) == (
        "detected",
        "denial_burst_ip",
        "198.51.100.66",
    )
    assert (burst["count"], burst["window_seconds"]) == (5, 60)
    assert burst["detail"] == "5 in 60 s; locked out for 60 s"
    # the alert comes with the 5th denial (the request that crosses the threshold)
    assert [e["event"] for e in events[:7]] == ["access", *["denial"] * 4, "alert", "denial"]
    assert (revoked["reason"], revoked["count"]) == ("revoked_token_used", 1)
    alice = events[0]
    assert revoked["token_fingerprint"] == alice["token_fingerprint"]
    locked = next(e for e in events if e["reason"] == "locked_out")
    assert (locked["client_ip"], locked["alg"]) == ("198.51.100.66", None)  # no token work

    # the table and the summary say it in words
    assert re.search(r"valid token, locked IP\s+198\.51\.100\.66\s+429\s+locked_out "
                     r"\(Retry-After: 60\)", out)  # fmt: skip
    assert re.search(r"alice, revoked token\s+203\.0\.113\.7\s+401\s+revoked", out)
    assert "revoked jti demo-alice-1" in out

    # the report ends it, with its Alerts section
    report = out[out.index("Audit report:") :]
    assert "11 events: 7 denied, 2 allowed, 2 detected" in report
    assert "Alerts (abuse detection), by reason" in report
    assert re.search(r"1\s+198\.51\.100\.66\s+\(denial_burst_ip\)", report)
    assert re.search(r"1\s+revoked_token_used", report)

    # everything is stored, and no token appears anywhere
    with sqlite3.connect(db) as connection:
        stored = dict(
            connection.execute("SELECT event, count(*) FROM jwt_audit_events GROUP BY event")
        )
    assert stored == {"access": 2, "denial": 7, "alert": 2}
    assert not JWT_LIKE.search(out)
    assert "Bearer" not in out


def test_demo_help_names_the_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jwt_audit_middleware.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--abuse" in result.stdout
