"""The jwt-audit command line."""

from __future__ import annotations

import json
import subprocess
import sys

from jwt_audit_middleware.events import REASONS


def test_demo_prints_one_event_per_request() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jwt_audit_middleware.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in lines]
    assert len(events) == 7
    assert [e["reason"] for e in events] == [
        None,
        "expired",
        "bad_signature",
        "missing_token",
        "insufficient_scope",
        "invalid_audience",
        None,
    ]
    assert all(e["schema"] == "jwt-audit/1" for e in events)
    assert all(e["reason"] is None or e["reason"] in REASONS for e in events)
    assert "7 requests, 7 audit events" in result.stdout
    assert "Bearer" not in result.stdout
    assert result.stderr == ""
