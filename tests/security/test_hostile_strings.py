"""Hostile strings in every client-controlled field reach no output raw.

``sub``, ``iss`` and ``kid`` (in a token whose signature verifies, so the event
shows them), the user agent, the request id and the path, each carrying CR/LF,
ESC, C1 controls, U+2028, U+202E or megabytes, through both middlewares.  In
every output: the event dict (strings printable and capped), its
``JSONFormatter`` line (one line, parseable, printable), the plain log line,
and the file of a ``JSONLinesHandler`` (exactly one such line).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attack_kit import (
    Channel,
    Header,
    Outcome,
    assert_allowed,
    assert_denied,
    assert_one_line_each,
    bearer,
    claims,
    signed,
)

from jwt_audit_middleware.sinks import JSONLinesHandler
from jwt_audit_middleware.testing import SigningKey

MB = 1024 * 1024
#: the longest string an event may carry: the path's cap (1024) and the "…" mark
LONGEST = 1025
GENERATED_ID = re.compile(r"[0-9a-f]{32}")

HOSTILE = {
    "crlf": 'alice\r\n{"event":"access","outcome":"allowed","subject":"admin"}\r\n',
    "esc": "\x1b[2J\x1b[31malice\x1b]0;pwned\x07",
    "c1": "alice\x85\x9b31m\x9d0;x\x9c\x8d",
    "u2028": "alice\u2028forged line\u2029another",
    "u202e": "\u202eecila\u202d\u2066x\u2069",
    "nul-del": "alice\x00\x7f\x08\x08\x08admin",
    "megabytes": ("\r\n\u2028\x1b\x85\u202e" + "A" * 250) * (2 * MB // 256),
}
FIELDS = ["sub", "iss", "kid", "user_agent", "request_id", "path"]


@pytest.fixture(params=["asgi", "wsgi"])
def channel(request: pytest.FixtureRequest) -> Channel:
    return Channel(request.param)


@pytest.fixture
def jsonl(tmp_path: Path) -> Iterator[tuple[JSONLinesHandler, Path]]:
    """A JSON-lines sink on the ``jwt_audit`` logger for one test."""
    path = tmp_path / "audit.jsonl"
    handler = JSONLinesHandler(path, flush_interval=0.01)
    logger = logging.getLogger("jwt_audit")
    logger.addHandler(handler)
    try:
        yield handler, path
    finally:
        logger.removeHandler(handler)
        handler.close()


def _request(hs: SigningKey, field: str, value: str) -> tuple[list[Header], str, str]:
    """(headers, path, token) for ``value`` placed in ``field``."""
    payload = claims()
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if field in ("sub", "iss"):
        payload[field] = value
    elif field == "kid":
        header["kid"] = value
    token = signed(hs.secret, header, payload)
    headers = bearer(token)
    path = "/api/items"
    if field == "user_agent":
        headers.append(("User-Agent", value.encode("utf-8")))
    elif field == "request_id":
        headers.append(("X-Request-ID", value.encode("utf-8")))
    elif field == "path":
        path = "/api/" + value
    return headers, path, token


def _assert_event_is_safe(event: dict[str, Any]) -> None:
    def walk(value: Any) -> None:
        if isinstance(value, str):
            assert value.isprintable(), ascii(value[:200])
            assert len(value) <= LONGEST
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(event)


def _assert_sink_file(handler: JSONLinesHandler, path: Path, outcome: Outcome) -> None:
    handler.close()
    data = path.read_bytes()
    assert data.endswith(b"\n")
    lines = data.decode("utf-8").split("\n")[:-1]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.splitlines() == [line]
    assert line.isprintable(), ascii(line[:300])
    assert json.loads(line) == json.loads(outcome.json_lines[0])


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("field", FIELDS)
def test_hostile_strings_in_every_output(
    channel: Channel,
    keys: dict[str, SigningKey],
    jsonl: tuple[JSONLinesHandler, Path],
    field: str,
    value: str,
) -> None:
    hs = keys["HS256"]
    headers, path, token = _request(hs, field, value)
    options = {"algorithms": ["HS256"], "secret": hs.secret, "max_token_bytes": 16 * MB}
    outcome = channel.send(options, headers, path=path)
    if field == "kid" and len(value) > 256:  # a kid that long is refused, not logged
        event = assert_denied(outcome, "malformed_token", token)
    else:
        event = assert_allowed(outcome, token)
    _assert_event_is_safe(event)
    assert_one_line_each(outcome)
    handler, file = jsonl
    _assert_sink_file(handler, file, outcome)

    shown = {
        "sub": event["subject"],
        "iss": event["issuer"],
        "kid": event["kid"],
        "user_agent": event["user_agent"],
        "path": event["path"],
        "request_id": event["request_id"],
    }[field]
    if field == "request_id":  # not sane: a generated one replaces it
        assert GENERATED_ID.fullmatch(shown)
    elif field == "kid" and len(value) > 256:
        assert shown is None
    else:  # the value is there, escaped and capped, not dropped
        assert isinstance(shown, str)
        assert shown
        assert shown != value


def test_a_clean_value_is_shown_as_it_is(
    channel: Channel, keys: dict[str, SigningKey], jsonl: tuple[JSONLinesHandler, Path]
) -> None:
    """The escaping above is not blanket mangling: a plain value passes untouched."""
    hs = keys["HS256"]
    token = signed(hs.secret, {"alg": "HS256", "kid": "key-1"}, claims(sub="alice", iss="idp"))
    headers = [*bearer(token), ("User-Agent", b"curl/8.5"), ("X-Request-ID", b"req-42")]
    outcome = channel.send({"algorithms": ["HS256"], "secret": hs.secret}, headers)
    event = assert_allowed(outcome, token)
    assert (event["subject"], event["issuer"], event["kid"]) == ("alice", "idp", "key-1")
    assert (event["user_agent"], event["request_id"]) == ("curl/8.5", "req-42")
    handler, file = jsonl
    _assert_sink_file(handler, file, outcome)
