"""jwt-audit report (SQL and JSON lines), explain, and the demo's stored trail."""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import json
import logging
import os
import re
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
from jwt_audit_middleware.report import Tally, TopK, render
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
        AuditLogger().login_failed(
            "mallory", reason="bad_password", client_ip="10.0.0.9", path="/login"
        )
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
    # a forged token names nobody, nor does a missing one: 2 + 4 refusals of nobody
    assert subjects == [("(anonymous)", 6), ("bob", 3), ("mallory", 1)]
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
    assert everything["skipped_records"] == 1
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


# -- hostile or huge input (issue 18) ------------------------------------------------

RECENT = "{:%Y-%m-%dT%H:%M:%S}.000Z"


def recent_time() -> str:
    return RECENT.format(datetime.datetime.now(datetime.timezone.utc))


def denial(**fields: Any) -> str:
    """One JSON line of a refused request, recent unless ``time`` is given."""
    event = {
        "schema": "jwt-audit/1",
        "event": "denial",
        "outcome": "denied",
        "reason": "missing_token",
        "time": recent_time(),
        "client_ip": "10.0.0.1",
        "path": "/orders",
        **fields,
    }
    return json.dumps(event, ensure_ascii=False)


def write_lines(path: Path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def report_json(*args: str) -> dict[str, Any]:
    result = jwt_audit("report", *args, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def one_line_error(result: Any) -> str:
    """A usage error: exit status 2 and one line on stderr, never a traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jwt-audit: ")
    text: str = lines[0]
    return text


def test_a_time_with_an_offset_and_z_is_skipped_and_counted(tmp_path: Path) -> None:
    shifted = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+01:00Z")
    path = write_lines(tmp_path / "offset.jsonl", denial(time=shifted), denial())
    data = report_json("--file", path)  # the default --since 24h compares the times
    assert data["total"] == 1
    assert data["skipped_records"] == 1
    text = jwt_audit("report", "--file", path)
    assert text.returncode == 0, text.stderr
    assert "1 bad record skipped" in text.stdout


@pytest.mark.parametrize("opening", ["[", '{"a": '])
def test_deeply_nested_json_is_a_bad_record(tmp_path: Path, opening: str) -> None:
    deep = opening * 20_000 + "1" + ("]" if opening == "[" else "}") * 20_000
    path = write_lines(tmp_path / "deep.jsonl", deep, denial(), deep)
    data = report_json("--file", path, "--since", "all")
    assert data["total"] == 1
    assert data["skipped_records"] == 2


@pytest.mark.parametrize(
    ("when", "hour"),
    [
        ("0001-01-01T00:00:00.000Z", "0001-01-01T00"),
        ("9999-12-31T23:59:59.999Z", "9999-12-31T23"),
    ],
)
def test_times_at_the_ends_of_the_calendar_are_reported(
    tmp_path: Path, when: str, hour: str
) -> None:
    path = write_lines(tmp_path / "far.jsonl", denial(time=when), denial())
    data = report_json("--file", path, "--since", "all")
    assert data["total"] == 2
    assert data["skipped_records"] == 0
    hours = [row["hour"] for row in data["hourly"]]
    assert hour in hours
    assert len(hours) == 2  # years apart: only the hours with events are drawn
    text = jwt_audit("report", "--file", path, "--since", "all")
    assert text.returncode == 0, text.stderr
    first_day = min(hour[:10], recent_time()[:10])  # buckets years wide, from the first day
    assert f"\n  {first_day}  " in text.stdout
    assert len([line for line in text.stdout.splitlines() if "(1 refused)" in line]) == 2


def test_adjacent_last_hours_of_the_calendar_are_filled_without_overflow(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "end.jsonl",
        denial(time="9999-12-31T21:00:00.000Z"),
        denial(time="9999-12-31T23:00:00.000Z"),
    )
    data = report_json("--file", path, "--since", "all")
    assert [row["hour"] for row in data["hourly"]] == [
        "9999-12-31T21",
        "9999-12-31T22",
        "9999-12-31T23",
    ]


@pytest.mark.parametrize("since", ["99999999999w", "1000000w", "9" * 400 + "s"])
def test_a_since_beyond_the_calendar_is_a_usage_error(tmp_path: Path, since: str) -> None:
    path = write_lines(tmp_path / "one.jsonl", denial())
    message = one_line_error(jwt_audit("report", "--file", path, "--since", since))
    assert "--since" in message
    assert "all" in message  # says what to use instead


def small_store(directory: Path) -> Path:
    """A SQLite store with two failed logins from one client."""
    url = f"sqlite:///{directory / 'audit.db'}"
    handler = SQLAuditHandler(url)
    LOGGER.addHandler(handler)
    try:
        AuditLogger().login_failed(
            "mallory", reason="bad_password", client_ip="10.0.0.9", path="/login"
        )
        AuditLogger().login_failed(
            "mallory", reason="bad_password", client_ip="10.0.0.9", path="/login"
        )
    finally:
        LOGGER.removeHandler(handler)
        handler.close()
    return directory / "audit.db"


def sql(database: Path, *statements: str) -> None:
    db = sqlite3.connect(database)
    try:
        for statement in statements:
            db.execute(statement)
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize("since", ["all", "24h"])
@pytest.mark.parametrize("bad_time", ["5", "1.5", "'2026-13-45 99:00:00'", "x'00'"])
def test_sqlite_rows_without_a_valid_time_are_skipped_and_counted(
    tmp_path: Path, since: str, bad_time: str
) -> None:
    database = small_store(tmp_path)
    sql(database, f"UPDATE jwt_audit_events SET time = {bad_time} WHERE id = 1")
    data = report_json("--db", f"sqlite:///{database}", "--since", since)
    assert data["total"] == 1
    assert data["skipped_records"] == 1
    assert sum(row["events"] for row in data["hourly"]) == 1
    text = jwt_audit("report", "--db", f"sqlite:///{database}", "--since", since)
    assert "1 bad record skipped" in text.stdout


@pytest.mark.parametrize("column", ["subject", "time", "outcome"])
def test_a_table_without_a_report_column_is_a_one_line_error(tmp_path: Path, column: str) -> None:
    database = small_store(tmp_path)
    sql(
        database,
        "DROP INDEX IF EXISTS ix_jwt_audit_events_time",
        "DROP INDEX IF EXISTS ix_jwt_audit_events_outcome_time",
        f"ALTER TABLE jwt_audit_events DROP COLUMN {column}",
    )
    message = one_line_error(jwt_audit("report", "--db", f"sqlite:///{database}"))
    assert column in message
    assert "jwt_audit_events" in message


@pytest.mark.parametrize("content", [b"not a database\n" * 100, b"\x00" * 4096])
def test_a_file_that_is_not_a_database_is_a_one_line_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    message = one_line_error(jwt_audit("report", "--db", f"sqlite:///{path}"))
    assert "not a database" in message
    assert "sqlalche.me" not in message


HOSTILE = "\x1b[2J\x1b]0;owned\x07\u202eevil\u2066\u2028\x85\x9b\x7f\r\n\x00"


def assert_nothing_raw(text: str) -> None:
    for ch in HOSTILE:
        if not ch.isprintable():
            assert ch not in text.replace("\n", ""), repr(ch)
    assert "\r" not in text


def test_control_and_bidi_characters_are_printed_escaped(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "hostile.jsonl",
        denial(
            path="/a" + HOSTILE,
            client_ip="ip" + HOSTILE,
            subject="sub" + HOSTILE,
            reason="why" + HOSTILE,
            outcome="denied" + HOSTILE,
            event="denial" + HOSTILE,
        ),
    )
    text = jwt_audit("report", "--file", path)
    assert text.returncode == 0, text.stderr
    assert_nothing_raw(text.stdout)
    assert "/a\\x1b[2J" in text.stdout
    assert "\\u202eevil\\u2066\\u2028\\x85\\x9b\\x7f" in text.stdout
    for name in ("ip", "sub", "why"):
        assert f"{name}\\x1b[2J" in text.stdout
    as_json = jwt_audit("report", "--file", path, "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert_nothing_raw(as_json.stdout)
    assert "\\u202e" not in as_json.stdout.replace("\\\\u202e", "")  # escaped text, not JSON
    data = json.loads(as_json.stdout)
    assert data["refused_paths"][0]["value"].startswith("/a\\x1b[2J")


def test_hostile_values_from_a_database_are_printed_escaped(tmp_path: Path) -> None:
    database = small_store(tmp_path)
    sql(database, "UPDATE jwt_audit_events SET path = '/p' || char(27) || '[2J' || char(8238)")
    text = jwt_audit("report", "--db", f"sqlite:///{database}", "--since", "all")
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout
    assert "\u202e" not in text.stdout
    assert "/p\\x1b[2J\\u202e" in text.stdout


def longest_line(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def test_a_huge_path_is_capped_and_a_huge_line_skipped(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "huge.jsonl",
        denial(path="/" + "a" * 40_000, subject="s" * 10_000, client_ip="1" * 10_000),
        '{"event": "denial", "outcome": "denied", "path": "/' + "b" * 2_000_000 + '"}',
        denial(),
    )
    text = jwt_audit("report", "--file", path, "--since", "all")
    assert text.returncode == 0, text.stderr
    assert longest_line(text.stdout) < 400
    assert "/aaaa" in text.stdout
    assert "…" in text.stdout
    assert "1 bad record skipped" in text.stdout  # the 2 MB line
    data = report_json("--file", path, "--since", "all")
    assert data["total"] == 2
    assert data["skipped_records"] == 1
    assert max(len(row["value"]) for row in data["refused_paths"]) < 400
    assert max(len(row["value"]) for row in data["top_subjects"]) < 400


def test_a_huge_path_in_a_database_is_capped(tmp_path: Path) -> None:
    database = small_store(tmp_path)
    sql(database, "UPDATE jwt_audit_events SET path = '/' || hex(zeroblob(500000))")
    text = jwt_audit("report", "--db", f"sqlite:///{database}", "--since", "all")
    assert text.returncode == 0, text.stderr
    assert longest_line(text.stdout) < 400
    assert "/0000" in text.stdout


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


def test_a_file_of_200000_unique_paths_is_counted_in_bounded_memory(tmp_path: Path) -> None:
    now = recent_time()
    lines = (
        denial(path=f"/probe/{i}", client_ip=f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}", time=now)
        for i in range(200_000)
    )
    tally = Tally(capacity=1000).feed(lines)
    sizes = {name: len(counter) for name, counter in tally.counters.items()}
    assert sizes["refused_paths"] == 1000
    assert sizes["top_client_ips"] == 1000
    assert all(size <= 1000 for size in sizes.values())
    result = tally.report("test", limit=5)
    assert result.total == 200_000
    assert set(result.approximate) >= {"refused_paths", "refused_by_client_ip", "top_client_ips"}
    assert "refused_by_reason" not in result.approximate  # one reason: exact
    assert result.refused_by_reason == [("missing_token", 200_000)]
    shown = io.StringIO()
    render(result, shown)
    assert "upper bounds" in shown.getvalue()


def test_the_hourly_histogram_keeps_a_bounded_number_of_hours() -> None:
    start = datetime.datetime(2020, 1, 1)
    lines = (
        denial(time=f"{start + datetime.timedelta(hours=i):%Y-%m-%dT%H:%M:%S}.000Z")
        for i in range(5000)
    )
    tally = Tally(hour_capacity=100).feed(lines)
    result = tally.report("test")
    assert result.total == 5000
    assert len(result.hourly) == 100
    assert result.hourly[-1][0] == f"{start + datetime.timedelta(hours=4999):%Y-%m-%dT%H}"
    assert result.events_before_histogram == 4900


def _unsigned(payload: str) -> str:
    """A token with a raw JSON payload of our choosing (its signature is junk)."""

    def segment(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).rstrip(b"=").decode()

    header = segment('{"alg":"RS256","kid":"rs"}')
    return f"{header}.{segment(payload)}.c2ln"


HOSTILE_CLAIMS = {
    "c1_and_bidi": '{"sub":"a\\u009b31m\\u0085b\\u2028c\\u202ed\\u2066e","exp":1}',
    "deeply_nested": '{"sub":"x","n":' + "[" * 5000 + "]" * 5000 + "}",
    "lone_surrogate": '{"sub":"\\ud800","exp":1}',
}
_TERMINAL_ACTS_ON = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


@pytest.mark.parametrize("case", sorted(HOSTILE_CLAIMS))
def test_explain_prints_hostile_claims_safely(
    case: str, key_files: tuple[SigningKey, Path]
) -> None:
    # found in review: raw C1/bidi in --json, RecursionError tracebacks, exit 2 on a surrogate
    _, public = key_files
    token = _unsigned(HOSTILE_CLAIMS[case])
    for extra in ([], ["--json"]):
        result = jwt_audit("explain", token, *options(public), *extra)
        assert result.returncode == 1, result.stderr  # a verdict (denied), not a crash
        assert "Traceback" not in result.stderr
        assert not _TERMINAL_ACTS_ON.search(result.stdout)
        if extra:
            assert json.loads(result.stdout)["verdict"] == "denied"


# -- issue 13 item 5: rough edges; issue 15: alerts and state events -------------------------


def alert(reason: str, count: int = 20, **fields: Any) -> dict[str, Any]:
    """An alert as abuse detection emits it (contract §9)."""
    from jwt_audit_middleware.events import app_event

    event = app_event("alert", "detected", reason=reason, detail=f"{count} in 60 s", **fields)
    event.update(count=count, window_seconds=60)
    return event


def detections() -> list[dict[str, Any]]:
    """3 alerts of 10.0.0.66, 1 of mallory, 2 of one shared token, 1 revoked; 2 state events."""
    from jwt_audit_middleware.events import app_event

    shared = "sha256:00112233aabbccdd"
    return [
        *(alert("denial_burst_ip", client_ip="10.0.0.66") for _ in range(3)),
        alert("denial_burst_subject", count=10, subject="mallory"),
        *(alert("token_shared", count=3, token_fingerprint=shared) for _ in range(2)),
        alert("revoked_token_used", count=1, token_fingerprint="sha256:ffeeddccbbaa9988"),
        app_event("state_event", "store_lost", reason="redis_unreachable"),
        app_event("state_event", "store_restored"),
        denial(),  # one refused request (as a JSON line)
    ]


def store_events(url: str | None, path: str | None, events: list[Any]) -> None:
    """Log ``events`` (dicts, or JSON lines as text) through the SQL and/or JSON-lines sinks."""
    handlers: list[logging.Handler] = []
    if url:
        handlers.append(SQLAuditHandler(url))
    if path:
        handlers.append(JSONLinesHandler(path))
    for handler in handlers:
        LOGGER.addHandler(handler)
    try:
        for event in events:
            data = json.loads(event) if isinstance(event, str) else event
            LOGGER.warning("%s", data["event"], extra={"jwt_audit": data})
    finally:
        for handler in handlers:
            LOGGER.removeHandler(handler)
            handler.close()


def check_detections(data: dict[str, Any]) -> None:
    assert data["total"] == 10
    assert data["by_event"] == {"alert": 7, "state_event": 2, "denial": 1}
    assert data["state_events"] == {"store_lost": 1, "store_restored": 1}
    reasons = [(row["value"], row["count"]) for row in data["alerts_by_reason"]]
    assert reasons == [
        ("denial_burst_ip", 3),
        ("token_shared", 2),
        ("denial_burst_subject", 1),
        ("revoked_token_used", 1),
    ]
    keys = [(row["reason"], row["key"], row["count"]) for row in data["alert_keys"]]
    assert keys == [
        ("denial_burst_ip", "10.0.0.66", 3),
        ("token_shared", "sha256:00112233aabbccdd", 2),
        ("denial_burst_subject", "mallory", 1),
        ("revoked_token_used", "sha256:ffeeddccbbaa9988", 1),
    ]
    # alerts and state events are not requests: neither refusals nor "top" rows
    assert [row["value"] for row in data["refused_by_reason"]] == ["missing_token"]
    assert [row["value"] for row in data["top_client_ips"]] == ["10.0.0.1"]
    assert sum(row["refused"] for row in data["hourly"]) == 1


def test_alerts_and_state_events_are_reported_alike_from_sql_and_files(tmp_path: Path) -> None:
    url, path = f"sqlite:///{tmp_path / 'a.db'}", str(tmp_path / "a.jsonl")
    store_events(url, path, detections())
    from_db, from_file = report_json("--db", url), report_json("--file", path)
    check_detections(from_db)
    check_detections(from_file)
    for part in (from_db, from_file):
        part.pop("source")
        part.pop("since")
    assert from_db == from_file
    text = jwt_audit("report", "--db", url).stdout
    assert "shared state store: 1 store_lost, 1 store_restored" in text
    assert "Alerts (abuse detection), by reason" in text
    assert re.search(r"\n\s+3\s+10\.0\.0\.66\s+\(denial_burst_ip\)\n", text)


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_alerts_from_a_database_server_too(server: str) -> None:
    import sqlalchemy as sa
    from test_sinks_sql import server_url

    url = server_url(server)
    table = f"report_alerts_{os.getpid()}"
    store_events_in(url, table)
    try:
        check_detections(report_json("--db", url, "--table", table))
    finally:
        engine = sa.create_engine(SQLAuditHandler(url, table=table).engine.url)
        with engine.begin() as db:
            db.execute(sa.text(f"DROP TABLE {table}"))
            db.execute(sa.text(f"DROP TABLE {table}_schema"))
        engine.dispose()


def store_events_in(url: str, table: str) -> None:
    handler = SQLAuditHandler(url, table=table)
    LOGGER.addHandler(handler)
    try:
        for event in detections():
            data = json.loads(event) if isinstance(event, str) else event
            LOGGER.warning("%s", data["event"], extra={"jwt_audit": data})
    finally:
        LOGGER.removeHandler(handler)
        handler.close()


def test_db_and_file_together_add_up(filled: tuple[str, str]) -> None:
    both = report_json("--db", filled[0], "--file", filled[1])
    assert both["total"] == 32
    assert both["by_outcome"] == {"denied": 20, "allowed": 12}
    subjects = [(row["value"], row["count"]) for row in both["refused_by_subject"]]
    assert subjects == [("(anonymous)", 12), ("bob", 6), ("mallory", 2)]
    assert sum(h["events"] for h in both["hourly"]) == 32
    assert " + " in both["source"]


def test_a_sqlite_stores_spill_file_is_counted_with_it(tmp_path: Path) -> None:
    database = tmp_path / "audit.db"
    url = f"sqlite:///{database}"
    store_events(url, None, [denial(subject="in-db")])
    write_lines(Path(f"{database}.spill.jsonl"), denial(subject="spilled"), denial())
    data = report_json("--db", url)
    assert data["total"] == 3
    subjects = {row["value"]: row["count"] for row in data["refused_by_subject"]}
    assert subjects == {"in-db": 1, "spilled": 1, "(anonymous)": 1}
    assert any("spill file counted" in note for note in data["notes"])
    text = jwt_audit("report", "--db", url).stdout
    assert "spill file counted too" in text


def test_a_servers_default_spill_file_is_named_not_counted(tmp_path: Path) -> None:
    from jwt_audit_middleware.report import _spill_file

    state = tmp_path / "state"
    (state / "jwt-audit").mkdir(parents=True)
    spill = state / "jwt-audit" / "jwt-audit-spill.jsonl"
    write_lines(spill, denial())
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(state)
    try:
        assert _spill_file("postgresql://db.example/audit") == (str(spill), False)
        assert _spill_file(f"sqlite:///{tmp_path / 'none.db'}") == (None, True)
    finally:
        if old is None:
            del os.environ["XDG_STATE_HOME"]
        else:
            os.environ["XDG_STATE_HOME"] = old


def test_a_sqlite_file_given_as_file_is_refused(filled: tuple[str, str]) -> None:
    database = filled[0].removeprefix("sqlite:///")
    result = jwt_audit("report", "--file", database)
    assert result.returncode == 2
    message = one_line_error(result)
    assert "is a SQLite database, not JSON lines: use --db sqlite:///" in message


def test_a_file_without_one_audit_line_is_refused(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "audit.jsonl.gz"
    path.write_bytes(gzip.compress((denial() + "\n").encode() * 50))
    result = jwt_audit("report", "--file", str(path))
    assert result.returncode == 2
    assert "none of its" in one_line_error(result)
    assert "is it a JSON-lines audit file" in one_line_error(result)
    # an empty file, or another program's JSON, is no error: 0 events
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert report_json("--file", str(empty))["total"] == 0


@pytest.mark.parametrize(
    "url",
    ["postgresql://jwt:secret@127.0.0.1:1/audit", "mysql+pymysql://jwt:secret@127.0.0.1:1/audit"],
)
def test_a_server_that_is_down_is_a_one_line_error(url: str) -> None:
    result = jwt_audit("report", "--db", url)
    assert result.returncode == 2
    message = one_line_error(result)
    assert "127.0.0.1" in message
    assert "secret" not in message


def test_a_since_without_a_unit_mentions_all(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", denial())
    result = jwt_audit("report", "--file", path, "--since", "3days")
    assert result.returncode == 2
    assert "or all" in one_line_error(result)


def test_report_needs_a_source() -> None:
    result = jwt_audit("report")
    assert result.returncode == 2
    assert "--db URL, --file PATH, or both" in one_line_error(result)


def _spread(days: int, per_hour: int = 1) -> Tally:
    tally = Tally()
    start = datetime.datetime(2026, 1, 1)
    for hour in range(days * 24):
        for _ in range(per_hour):
            event = {"event": "denial", "outcome": "denied", "reason": "expired"}
            tally.add(event, start + datetime.timedelta(hours=hour, minutes=5))
    return tally


@pytest.mark.parametrize(
    ("days", "title", "rows"),
    [(1, "hour", 24), (2, "hour", 48), (3, "2 hours", 36), (30, "day", 30), (90, "2 days", 45)],
)
def test_the_histogram_widens_its_buckets_for_long_spans(days: int, title: str, rows: int) -> None:
    report = _spread(days).report("test")
    out = io.StringIO()
    render(report, out)
    lines = out.getvalue().splitlines()
    assert f"Events per {title} (UTC)   █ events  ░ of them refused" in lines
    bars = [line for line in lines if "░" in line and "refused)" in line]
    assert len(bars) == rows
    assert sum(int(line.split()[-3]) for line in bars) == days * 24
    assert len(report.hourly) == days * 24  # --json keeps every hour


def test_histogram_buckets_cover_empty_stretches() -> None:
    from jwt_audit_middleware.report import histogram

    size, rows = histogram([("2026-01-01T00", 5, 1), ("2026-03-01T00", 7, 0)])
    assert size == 48
    assert rows[0] == ("2026-01-01", 5, 1)
    assert rows[-1][1:] == (7, 0)
    assert len(rows) <= 48
    assert sum(total for _, total, _ in rows) == 12
    assert histogram([]) == (1, [])


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_the_closing_records_of_hash_chains_are_not_counted(tmp_path: Path, kind: str) -> None:
    from jwt_audit_middleware.events import app_event
    from jwt_audit_middleware.report import report_from_database, report_from_files
    from jwt_audit_middleware.sinks import JSONLinesHandler, SQLAuditHandler

    path = tmp_path / "audit.jsonl"
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    logger = logging.getLogger(f"jwt_audit_report_chain_{kind}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for _ in range(2):  # two streams: two closing records
        handler = (
            JSONLinesHandler(str(path), chain=True)
            if kind == "jsonl"
            else SQLAuditHandler(url, chain=True)
        )
        logger.addHandler(handler)
        for n in range(3):
            AuditLogger(logger).emit(app_event("access", "allowed", subject=f"u{n}"))
        logger.removeHandler(handler)
        handler.close()
    report = report_from_files([str(path)]) if kind == "jsonl" else report_from_database(url)
    assert report.to_dict()["total"] == 6
    assert "chain_closed" not in report.to_dict()["by_event"]
