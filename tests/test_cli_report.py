"""jwt-audit report (SQL and JSON lines), explain, and the demo's stored trail."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import assert_no_secret
from test_sinks_jsonl import LOGGER, hello

from jwt_audit_middleware import AuditLogger, JWTAuditMiddleware
from jwt_audit_middleware.report import TopK
from jwt_audit_middleware.sinks import JSONLinesHandler, SQLAuditHandler
from jwt_audit_middleware.testing import SigningKey

AUDIENCE = "orders"


def inherited() -> dict[str, str]:
    """The environment without JWT_AUDIT_* options, so the explain runs are isolated."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JWT_AUDIT_")}


def jwt_audit(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "jwt_audit_middleware.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**inherited(), **(env or {})},
    )


async def traffic(key: SigningKey, forger: SigningKey) -> None:
    """A known mix: 6 allowed (alice x4, bob x2), 3 expired (bob), 2 forged, 4 missing."""
    app = JWTAuditMiddleware(hello, **key.options(audience=AUDIENCE))
    plan: list[tuple[str, str, str | None]] = []
    plan += [("10.0.0.1", "/orders", key.token(sub="alice", aud=AUDIENCE)) for _ in range(4)]
    plan += [("10.0.0.2", "/orders", key.token(sub="bob", aud=AUDIENCE)) for _ in range(2)]
    plan += [
        ("10.0.0.2", "/admin", key.token(sub="bob", aud=AUDIENCE, expires_in=-60)) for _ in range(3)
    ]
    plan += [("10.0.0.3", "/admin", forger.token(sub="root", aud=AUDIENCE)) for _ in range(2)]
    plan += [("10.0.0.3", "/secret", None) for _ in range(4)]
    for ip, path, token in plan:
        transport = httpx.ASGITransport(app=app, client=(ip, 1000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            await http.get(path, headers=headers)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A SQLite database and a JSON-lines file, both filled by the same requests."""
    directory = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{directory / 'audit.db'}"
    path = str(directory / "audit.jsonl")
    sql, lines = SQLAuditHandler(url), JSONLinesHandler(path)
    LOGGER.addHandler(sql)
    LOGGER.addHandler(lines)
    try:
        key = SigningKey.generate("ES256", kid="k")
        forger = SigningKey.generate("ES256", kid="k")
        asyncio.run(traffic(key, forger))
        AuditLogger().login_failed("mallory", "bad_password", "10.0.0.9", path="/login")
    finally:
        for handler in (sql, lines):
            LOGGER.removeHandler(handler)
            handler.close()
    return url, path


def expected_counts(report: dict[str, Any]) -> None:
    assert report["total"] == 16
    assert report["by_outcome"] == {"denied": 10, "allowed": 6}
    assert report["by_event"] == {"denial": 9, "access": 6, "login_failed": 1}
    reasons = {row["value"]: row["count"] for row in report["refused_by_reason"]}
    assert reasons == {"missing_token": 4, "expired": 3, "bad_signature": 2, "bad_password": 1}
    ips = [(row["value"], row["count"]) for row in report["refused_by_client_ip"]]
    assert ips == [("10.0.0.3", 6), ("10.0.0.2", 3), ("10.0.0.9", 1)]
    subjects = [(row["value"], row["count"]) for row in report["refused_by_subject"]]
    assert subjects == [("bob", 3), ("mallory", 1)]  # a forged token names nobody
    paths = [(row["value"], row["count"]) for row in report["refused_paths"]]
    assert paths == [("/admin", 5), ("/secret", 4), ("/login", 1)]
    top = [(row["value"], row["count"]) for row in report["top_subjects"]]
    assert top == [("bob", 5), ("alice", 4), ("mallory", 1)]
    assert sum(h["events"] for h in report["hourly"]) == 16
    assert sum(h["refused"] for h in report["hourly"]) == 10


def test_report_from_the_database(filled: tuple[str, str]) -> None:
    result = jwt_audit("report", "--db", filled[0], "--json")
    assert result.returncode == 0, result.stderr
    expected_counts(json.loads(result.stdout))


def test_report_from_the_file_agrees(filled: tuple[str, str]) -> None:
    result = jwt_audit("report", "--file", filled[1], "--since", "1h", "--json")
    assert result.returncode == 0, result.stderr
    from_file = json.loads(result.stdout)
    expected_counts(from_file)
    from_db = json.loads(jwt_audit("report", "--db", filled[0], "--since", "1h", "--json").stdout)
    for part in (from_file, from_db):
        part.pop("source")
        part.pop("since")
    assert from_file == from_db


def test_report_text_has_tables_and_histogram(filled: tuple[str, str]) -> None:
    result = jwt_audit("report", "--db", filled[0])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "16 events: 10 denied, 6 allowed" in text
    assert "Refused, by reason" in text
    assert "Events per hour (UTC)" in text
    histogram = [line for line in text.splitlines() if line.rstrip().endswith("(10 refused)")]
    assert len(histogram) == 1
    assert "█" in histogram[0]
    assert "░" in histogram[0]


def test_report_since_excludes_old_events(tmp_path: Path) -> None:
    path = tmp_path / "old.jsonl"
    old = {"schema": "jwt-audit/1", "event": "access", "outcome": "allowed"}
    path.write_text(
        json.dumps({**old, "time": "2001-01-01T00:00:00.000Z"})
        + "\nnot json\n"
        + json.dumps({**old, "time": "2001-01-01T05:00:00.000Z"})
        + "\n"
    )
    recent = json.loads(jwt_audit("report", "--file", str(path), "--json").stdout)
    assert recent["total"] == 0
    everything = json.loads(
        jwt_audit("report", "--file", str(path), "--since", "all", "--json").stdout
    )
    assert everything["total"] == 2
    assert everything["unreadable_lines"] == 1
    assert len(everything["hourly"]) == 6  # the empty hours between are drawn too
    bad = jwt_audit("report", "--file", str(path), "--since", "yesterday")
    assert bad.returncode == 2
    assert "24h" in bad.stderr


def test_demo_stores_its_events_and_reports(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    result = jwt_audit("demo", "--db", db)
    assert result.returncode == 0, result.stderr
    assert "Stored 7 events" in result.stdout
    assert "7 events: 5 denied, 2 allowed" in result.stdout
    again = json.loads(jwt_audit("report", "--db", db, "--json").stdout)
    assert again["total"] == 7
    assert result.stderr == ""


# -- explain -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, Path]:
    key = SigningKey.generate("RS256", kid="rs")
    path = tmp_path_factory.mktemp("keys") / "public.pem"
    assert key.public_pem is not None
    path.write_text(key.public_pem)
    return key, path


def options(public: Path) -> list[str]:
    return ["--algorithms", "RS256", "--public-key-file", str(public), "--audience", AUDIENCE]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("valid", None),
        ("expired", "expired"),
        ("forged", "bad_signature"),
        ("wrong_audience", "invalid_audience"),
    ],
)
def test_explain_names_the_reason_and_never_prints_the_token(
    case: str, reason: str | None, key_files: tuple[SigningKey, Path]
) -> None:
    key, public = key_files
    token = {
        "valid": lambda: key.token(sub="alice", aud=AUDIENCE),
        "expired": lambda: key.token(sub="alice", aud=AUDIENCE, expires_in=-7200),
        "forged": lambda: SigningKey.generate("RS256", kid="rs").token(sub="eve", aud=AUDIENCE),
        "wrong_audience": lambda: key.token(sub="alice", aud="billing"),
    }[case]()
    text = jwt_audit("explain", "-", *options(public), stdin=token + "\n")
    as_json = jwt_audit("explain", token, *options(public), "--json")
    for result in (text, as_json):
        assert result.returncode == (0 if reason is None else 1), result.stderr
        assert_no_secret(result.stdout + result.stderr, token)
    data = json.loads(as_json.stdout)
    assert data["reason"] == reason
    assert data["verdict"] == ("allowed" if reason is None else "denied")
    assert data["claims"]["sub"] in ("alice", "eve")
    assert data["header"]["alg"] == "RS256"
    assert data["signature_verified"] is (case != "forged")
    if reason:
        assert f"reason:      {reason}:" in text.stdout
    else:
        assert "verdict:     allowed (200)" in text.stdout
    assert "exp: " in text.stdout
    if case == "expired":
        assert "2 h ago)" in text.stdout
    assert "fingerprint: sha256:" in text.stdout


def test_explain_from_the_environment_with_an_hmac_secret() -> None:
    key = SigningKey.generate("HS256")
    env = {"JWT_AUDIT_ALGORITHMS": "HS256", "JWT_AUDIT_SECRET": key.secret.hex()}
    hex_key = SigningKey("HS256", key.secret.hex().encode())
    token = hex_key.token(sub="svc")
    ok = jwt_audit("explain", "-", "--env", stdin="Bearer " + token, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "verdict:     allowed" in ok.stdout
    assert_no_secret(ok.stdout + ok.stderr, token, key.secret.hex())
    garbage = jwt_audit("explain", "-", "--env", stdin="not.a.token", env=env)
    assert garbage.returncode == 1
    assert "malformed_token" in garbage.stdout
    assert "(cannot be decoded)" in garbage.stdout


def test_explain_needs_a_configuration() -> None:
    result = jwt_audit("explain", "a.b.c")
    assert result.returncode == 2
    assert "--algorithms" in result.stderr
    bad = jwt_audit("explain", "a.b.c", "--algorithms", "RS256")
    assert bad.returncode == 2
    assert "configuration" in bad.stderr


def test_report_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = jwt_audit("report", "--db", f"sqlite:///{missing}")
    assert result.returncode == 2
    assert "no such database file" in result.stderr
    assert not missing.exists()  # nor created
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    result = jwt_audit("report", "--db", f"sqlite:///{empty}")
    assert result.returncode == 2
    assert "has no table" in result.stderr
    result = jwt_audit("report", "--db", str(empty))
    assert result.returncode == 2
    assert "not a database URL" in result.stderr
    assert "Traceback" not in result.stderr


# -- bounded counting (issue 18) -----------------------------------------------------


def test_top_k_keeps_at_most_its_capacity_and_finds_the_heavy_hitters() -> None:
    counter = TopK(capacity=1000)
    for i in range(200_000):
        counter.add(f"/unique/{i}")
        if i % 10 == 0:
            counter.add("/heavy")
    assert len(counter) == 1000
    assert counter.overflowed
    (value, count), *_ = counter.most_common(1)
    assert value == "/heavy"
    assert 20_000 <= count <= 20_000 + 220_000 // 1000  # an upper bound, off by at most N/k


def test_top_k_is_exact_below_its_capacity() -> None:
    counter = TopK(capacity=4)
    for value in "abacabad":
        counter.add(value)
    assert not counter.overflowed
    assert counter.most_common(10) == [("a", 4), ("b", 2), ("c", 1), ("d", 1)]
