"""AuditLogger (LoggerAdapter) and JSONFormatter."""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jwt_audit_middleware import AuditLogger, JSONFormatter
from jwt_audit_middleware.audit import LOGGER_NAME, RECORD_ATTRIBUTE
from jwt_audit_middleware.events import SCHEMA, copy_claims, identity_fields
from jwt_audit_middleware.model import Verdict, event_base
from jwt_audit_middleware.request import RequestInfo
from jwt_audit_middleware.testing import CapturedEvents


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def handler(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, ListHandler]]:
    logger = logging.getLogger(f"tests.audit.{request.node.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    sink = ListHandler()
    logger.addHandler(sink)
    yield logger, sink
    logger.removeHandler(sink)


def info(**changes: Any) -> RequestInfo:
    values: dict[str, Any] = {
        "method": "GET",
        "path": "/orders",
        "protocol": "http",
        "client_ip": "203.0.113.9",
        "user_agent": "curl/8.0",
        "request_id": "req-1",
        "started": time.perf_counter(),
    }
    values.update(changes)
    return RequestInfo(**values)


HOSTILE_CLAIMS = {
    "sub": 'eve\r\n\x1b[2J{"forged": true}\u2028',
    "iss": "https://issuer.example",
    "aud": ["api"],
    "jti": "jti-1",
    "message": "claim named message",
    "args": ["claim", "named", "args"],
    "exc_info": "claim named exc_info",
    "levelname": "CRITICAL",
    "email": "eve@example.com",
}


# -- AuditLogger.process ---------------------------------------------------


def test_process_merges_a_calls_extra_with_the_adapters(
    handler: tuple[logging.Logger, ListHandler],
) -> None:
    logger, sink = handler
    adapter = AuditLogger(logger, {"service": "billing", "env": "prod"})
    adapter.warning("with extra", extra={"env": "staging", "user": "bob"})
    adapter.warning("without extra")
    first, second = sink.records
    assert (first.service, first.env, first.user) == ("billing", "staging", "bob")  # type: ignore[attr-defined]
    assert (second.service, second.env) == ("billing", "prod")  # type: ignore[attr-defined]
    assert not hasattr(second, "user")
    assert adapter.extra == {"service": "billing", "env": "prod"}


@pytest.mark.parametrize("name", ["msg", "levelno", "name", "created", "message", "jwt_audit"])
def test_an_adapter_extra_cannot_replace_record_attributes_or_the_event(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        AuditLogger(logging.getLogger("tests.audit.reserved"), {name: "forged"})


def test_process_returns_message_and_merged_kwargs() -> None:
    adapter = AuditLogger(logging.getLogger("tests.audit.process"), {"a": 1})
    msg, kwargs = adapter.process("m", {"extra": {"b": 2}, "stacklevel": 2})
    assert msg == "m"
    assert kwargs == {"extra": {"a": 1, "b": 2}, "stacklevel": 2}


def test_default_logger_is_jwt_audit_at_info() -> None:
    adapter = AuditLogger()
    assert adapter.logger.name == LOGGER_NAME == "jwt_audit"
    assert adapter.logger.isEnabledFor(logging.INFO)


def test_audit_records_carry_what_a_stdlib_record_carries(
    handler: tuple[logging.Logger, ListHandler],
) -> None:
    logger, sink = handler
    stdlib: list[logging.LogRecord] = []

    def work() -> None:
        AuditLogger(logger).emit({"event": "access", "outcome": "allowed", "path": "/x"})
        stdlib.append(logger.makeRecord(logger.name, logging.INFO, "f.py", 1, "m", (), None))

    thread = threading.Thread(target=work, name="audit-test-thread")
    thread.start()
    thread.join()
    (record,) = sink.records
    (expected,) = stdlib
    formatted = {"taskName", "message", "asctime"}  # 3.12+ / set by formatters on the way
    assert set(record.__dict__) - formatted == set(expected.__dict__) - formatted | {
        RECORD_ATTRIBUTE
    }
    assert isinstance(record, logging.LogRecord)
    for name in ("name", "levelno", "levelname", "thread", "threadName", "process"):
        assert getattr(record, name) == getattr(expected, name), name
    assert record.threadName == "audit-test-thread"
    assert record.processName == expected.processName
    assert abs(record.created - expected.created) < 5
    assert record.msecs == pytest.approx((record.created - int(record.created)) * 1000, abs=1e-3)
    assert (
        record.getMessage()
        == "access allowed - /x status=None reason=None subject=None request_id=None"
    )
    assert (
        logging.Formatter("%(levelname)s %(name)s %(threadName)s %(message)s")
        .format(record)
        .startswith(f"INFO {logger.name} audit-test-thread access allowed")
    )


def test_audit_records_come_from_a_custom_record_factory(
    handler: tuple[logging.Logger, ListHandler],
) -> None:
    logger, sink = handler
    original = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(*args, **kwargs)
        record.trace_id = "t-1"
        return record

    logging.setLogRecordFactory(factory)
    try:
        AuditLogger(logger).emit({"event": "access", "outcome": "allowed"})
    finally:
        logging.setLogRecordFactory(original)
    (record,) = sink.records
    assert record.trace_id == "t-1"
    assert record.jwt_audit == {"event": "access", "outcome": "allowed"}


def test_logger_filters_still_apply(handler: tuple[logging.Logger, ListHandler]) -> None:
    logger, sink = handler
    logger.addFilter(lambda record: record.jwt_audit["outcome"] != "denied")
    adapter = AuditLogger(logger)
    adapter.emit({"event": "denial", "outcome": "denied"}, logging.WARNING)
    adapter.emit({"event": "access", "outcome": "allowed"})
    assert [r.jwt_audit["outcome"] for r in sink.records] == ["allowed"]


# -- events through the adapter -------------------------------------------


def verdict_with_claims(
    allow: bool,
    outcome: str,
    claims: dict[str, Any],
    *,
    log_claims: tuple[str, ...],
    scopes: frozenset[str] = frozenset(),
    alg: str | None = None,
    kid: str | None = None,
    **fields: Any,
) -> Verdict:
    """A verdict whose event carries ``claims``' identity, as the gate builds one."""
    identity = identity_fields(claims, scopes, alg, kid)
    identity["claims"] = copy_claims(claims, log_claims)
    base = event_base(
        outcome, fields.get("reason"), fields.get("fingerprint"), fields.get("detail"), identity
    )
    return Verdict(allow, outcome, event_base=base, **fields)


def test_access_event(events: CapturedEvents) -> None:
    adapter = AuditLogger()
    verdict = verdict_with_claims(
        True,
        "allowed",
        HOSTILE_CLAIMS,
        log_claims=("email", "message"),
        scopes=frozenset({"write", "read"}),
        alg="RS256",
        kid="k1",
        fingerprint="sha256:0123456789abcdef",
    )
    wall = 1700000000.5
    event = adapter.request_event(verdict, info(), 200, now=wall)
    assert events.only() == event
    assert event["schema"] == SCHEMA
    assert event["event"] == "access"
    assert event["outcome"] == "allowed"
    assert event["reason"] is None
    assert event["status"] == 200
    assert event["time"] == "2023-11-14T22:13:20.500Z"
    assert event["subject"] == 'eve\\x0d\\x0a\\x1b[2J{"forged": true}\\u2028'
    assert event["issuer"] == "https://issuer.example"
    assert event["token_id"] == "jti-1"
    assert event["audience"] == ["api"]
    assert event["scopes"] == ["read", "write"]
    assert event["claims"] == {"email": "eve@example.com", "message": "claim named message"}
    assert isinstance(event["duration_ms"], float)
    assert event["duration_ms"] >= 0
    assert events.records[0].levelno == logging.INFO
    assert getattr(events.records[0], RECORD_ATTRIBUTE) is event


@pytest.mark.parametrize(
    ("outcome", "reason", "level"),
    [
        ("denied", "expired", logging.WARNING),
        ("would_deny", "expired", logging.INFO),
        ("denied", "internal_error", logging.ERROR),
    ],
)
def test_denial_event_levels(events: CapturedEvents, outcome: str, reason: str, level: int) -> None:
    verdict = Verdict(outcome == "would_deny", outcome, reason=reason, status=401, detail="d")
    event = AuditLogger().request_event(verdict, info(), 401)
    assert event["event"] == "denial"
    assert event["reason"] == reason
    assert event["subject"] is None
    assert event["audience"] == []
    assert event["claims"] == {}
    assert events.records[0].levelno == level


# -- JSONFormatter -----------------------------------------------------------


def one_json_line(text: str) -> dict[str, Any]:
    assert "\n" not in text
    assert "\r" not in text
    assert len(text.splitlines()) == 1
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def test_json_formatter_renders_a_hostile_event_on_one_line(events: CapturedEvents) -> None:
    adapter = AuditLogger()
    verdict = verdict_with_claims(
        False,
        "denied",
        HOSTILE_CLAIMS,
        log_claims=("message", "args", "exc_info", "levelname"),
        reason="expired",
        status=401,
        detail="the token has expired",
        alg="RS256\n",
        kid="kid\x1b",
    )
    event = adapter.request_event(verdict, info(user_agent="ua\r\nX: y"), 401)
    (record,) = events.records
    line = JSONFormatter().format(record)
    data = one_json_line(line)
    assert data["level"] == "WARNING"
    assert data["logger"] == "jwt_audit"
    assert data["claims"] == {
        "message": "claim named message",
        "args": ["claim", "named", "args"],
        "exc_info": "claim named exc_info",
        "levelname": "CRITICAL",
    }
    assert data["subject"] == event["subject"]
    assert data["alg"] == "RS256\\x0a"
    assert data["kid"] == "kid\\x1b"
    assert data["reason"] == "expired"
    assert "message" not in data
    assert "\x1b" not in line


def test_json_formatter_escapes_raw_control_characters() -> None:
    record = logging.LogRecord("jwt_audit", logging.WARNING, __file__, 1, "m", (), None)
    setattr(
        record,
        RECORD_ATTRIBUTE,
        {"event": "denial", "subject": "a\r\nb\x1bc\x00", "claims": {"message": "x\ny"}},
    )
    data = one_json_line(JSONFormatter().format(record))
    assert data["subject"] == "a\r\nb\x1bc\x00"
    assert data["claims"] == {"message": "x\ny"}
    assert data["level"] == "WARNING"
    assert data["logger"] == "jwt_audit"


def test_json_formatter_non_audit_record(handler: tuple[logging.Logger, ListHandler]) -> None:
    logger, sink = handler
    logger.error("hello %s", "wor\nld\x1b")
    data = one_json_line(JSONFormatter().format(sink.records[0]))
    assert data["message"] == "hello wor\\x0ald\\x1b"
    assert data["level"] == "ERROR"
    assert data["logger"] == logger.name
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["time"])
    assert set(data) == {"time", "level", "logger", "message"}


def test_json_formatter_exception_stays_on_one_line(
    handler: tuple[logging.Logger, ListHandler],
) -> None:
    logger, sink = handler
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("failed")
    line = JSONFormatter().format(sink.records[0])
    data = one_json_line(line)
    assert data["message"] == "failed"
    assert "Traceback" in data["exception"]
    assert "RuntimeError: boom" in data["exception"]


def test_json_formatter_default_str_and_ascii() -> None:
    record = logging.LogRecord("jwt_audit", logging.INFO, __file__, 1, "m", (), None)
    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)
    setattr(record, RECORD_ATTRIBUTE, {"event": "access", "subject": "jürgen", "when": when})
    plain = one_json_line(JSONFormatter().format(record))
    assert plain["when"] == str(when)
    assert "jürgen" in JSONFormatter().format(record)
    ascii_line = JSONFormatter(ensure_ascii=True).format(record)
    assert "jürgen" not in ascii_line
    assert json.loads(ascii_line)["subject"] == "jürgen"


def test_json_formatter_with_a_stream_handler(
    events: CapturedEvents, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(JSONFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(stream)
    try:
        verdict = Verdict(False, "denied", reason="bad_signature", status=401, detail="bad")
        AuditLogger().request_event(verdict, info(path="/a\nb"), 401)
    finally:
        logger.removeHandler(stream)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert events.only()["path"] == "/a\nb"
    assert json.loads(lines[0])["reason"] == "bad_signature"


# -- login helpers are hard to misuse -------------------------------------------------

PASSWORD = "correct horse battery staple"


@pytest.mark.parametrize(
    "call",
    [
        lambda audit: audit.login_failed("bob", PASSWORD),  # the password as the reason
        lambda audit: audit.login_failed("bob", "bad_password", PASSWORD),  # ... as the IP
        lambda audit: audit.login_succeeded("bob", PASSWORD),
        lambda audit: audit.login_failed("bob", reason=PASSWORD),
        lambda audit: audit.login_failed("bob", reason="bad_password", client_ip=PASSWORD),
        lambda audit: audit.login_succeeded("bob", client_ip=PASSWORD),
        lambda audit: audit.login_succeeded({"username": "bob", "password": PASSWORD}),
    ],
)
def test_login_events_refuse_a_password_in_any_field(call: Any, events: CapturedEvents) -> None:
    with pytest.raises((TypeError, ValueError)) as raised:
        call(AuditLogger())
    assert PASSWORD not in str(raised.value)
    assert events == []


def test_login_events_with_keywords(events: CapturedEvents) -> None:
    audit = AuditLogger()
    audit.login_failed("bob", reason="bad_password", client_ip="::ffff:192.0.2.1")
    audit.login_succeeded("bob", client_ip="2001:db8::1")
    assert [(e["event"], e["reason"], e["client_ip"]) for e in events] == [
        ("login_failed", "bad_password", "192.0.2.1"),
        ("login_succeeded", None, "2001:db8::1"),
    ]
