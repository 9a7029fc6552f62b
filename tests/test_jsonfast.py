"""The JSON text of events: orjson (the ``fast`` extra) and the stdlib give the same bytes.

``_jsonfast.orjson_dumps`` is compared with ``_jsonfast.stdlib_dumps`` value by
value, on the values where orjson differs from the stdlib when left to itself,
and on random events; then the sinks' own output (JSON lines, the SQL ``data``
column) is compared between a process with orjson and one without it.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import os
import random
import subprocess
import sys
import textwrap
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from jwt_audit_middleware import _jsonfast
from jwt_audit_middleware._jsonfast import orjson_dumps, stdlib_dumps

try:
    import orjson
except ImportError:  # pragma: no cover - the test extra installs it
    orjson = None

needs_orjson = pytest.mark.skipif(orjson is None, reason="orjson not installed")


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Mode(str, enum.Enum):
    ENFORCE = "enforce"


class Tag(str):
    pass


class Count(int):
    pass


class Claims(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


@dataclasses.dataclass
class Point:
    x: int


class _EqualityOnly(type):  # noqa: PLW1641 - unhashable on purpose
    """A metaclass with ``__eq__`` and no ``__hash__``: its classes cannot be hashed."""

    def __eq__(cls, other: object) -> bool:
        return cls is other


class Unhashable(metaclass=_EqualityOnly):
    def __str__(self) -> str:
        return "unhashable type"


class Custom:
    def __str__(self) -> str:
        return "custom\u2028value"


TRICKY: list[Any] = [
    # floats orjson writes differently on its own
    1e-05,
    -7.782979270564067e-06,
    9.999999999999999e-05,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
    # floats both write alike
    0.0,
    -0.0,
    1e-4,
    0.412,
    1e16,
    1.2345678901234568e17,
    1.7976931348623157e308,
    # what JSON lacks: str() in both
    Colour.RED,
    Level.HIGH,
    Mode.ENFORCE,
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    datetime.datetime(2025, 5, 20, 10, 0, 0, 123000, tzinfo=datetime.timezone.utc),
    datetime.date(2025, 5, 20),
    datetime.time(10, 0),
    decimal.Decimal("1.10"),
    Point(1),
    b"bytes",
    {1, 2},
    Custom(),
    Unhashable(),
    # subclasses of JSON types
    Tag("tag"),
    Count(7),
    Claims(a=1),
    Items([1, "x"]),
    OrderedDict(b=1, a=2),
    # integers and keys
    2**64,
    -(2**63) - 1,
    2**63 - 1,
    {1: "int key", None: "none key", 1.5: "float key", False: "bool key"},
    {Mode.ENFORCE: "str-enum key"},
    # text
    "lone surrogate \ud800",
    "line\u2028separator\u2029paragraph\x85next",
    "".join(map(chr, range(0x20))) + '"\\/\x7f',
    "emoji \U0001f600 and bom \ufeff",
    # structure
    [],
    {},
    ("tuple", 1),
    {"deep": [[[[[[[[[["ten levels"]]]]]]]]]]},
]


@pytest.mark.parametrize("value", TRICKY, ids=lambda v: type(v).__name__ + ":" + repr(v)[:30])
def test_same_text_as_the_stdlib_for_every_tricky_value(value: Any) -> None:
    event = {"schema": "jwt-audit/1", "value": value, "nested": {"list": [value]}}
    assert orjson_dumps(event) == stdlib_dumps(event)
    assert orjson_dumps(value) == stdlib_dumps(value)


def test_a_circular_event_fails_as_with_the_stdlib() -> None:
    event: dict[str, Any] = {"a": 1}
    event["self"] = event
    with pytest.raises(ValueError, match="Circular reference"):
        stdlib_dumps(event)
    with pytest.raises(ValueError, match="Circular reference"):
        orjson_dumps(event)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(12 if depth < 3 else 8)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randrange(-(2**70), 2**70) if rng.random() < 0.1 else rng.randrange(-999, 10**6)
    if choice == 3:
        return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10 ** rng.randrange(-12, 30)])
    if choice == 4:
        return rng.choice([math.nan, math.inf, -0.0, round(rng.random() * 50, 3)])
    if choice in (5, 6, 7):
        alphabet = 'abc "\\\n\t\x00\x1f\x7f\x85é€\u2028\u2029\U0001f600\ud800'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if choice == 8:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 9:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    if choice == 10:
        return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(4))}
    return rng.choice([Colour.RED, Level.HIGH, Mode.ENFORCE, Custom(), Tag("t"), b"\x00"])


def test_same_text_as_the_stdlib_for_random_events() -> None:
    rng = random.Random(20250520)
    for _ in range(3000):
        event = {
            "schema": "jwt-audit/1",
            "event": "access",
            "duration_ms": round(rng.random() * 100, 3),
            "audience": ["api"],
            "claims": {f"c{i}": _random_value(rng) for i in range(rng.randrange(5))},
            "extra": _random_value(rng),
        }
        assert orjson_dumps(event) == stdlib_dumps(event), event


@needs_orjson
def test_orjson_is_used_when_installed_and_does_the_plain_events() -> None:
    assert _jsonfast.FAST
    assert _jsonfast.dumps is orjson_dumps
    event = {"schema": "jwt-audit/1", "status": 200, "duration_ms": 0.5, "scopes": ["a"]}
    assert _jsonfast._plain(event.values(), 0)
    assert not _jsonfast._plain([math.nan], 0)
    assert not _jsonfast._plain([1e-5], 0)
    assert not _jsonfast._plain([Colour.RED], 0)
    assert not _jsonfast._plain([{"a": [Tag("x")]}], 0)


# -- the sinks' output, with and without orjson, in fresh processes ---------------------

SCRIPT = textwrap.dedent(
    """
    import json, logging, math, sys
    if sys.argv[1] == "stdlib":
        sys.modules["orjson"] = None  # as if the extra were not installed
    from jwt_audit_middleware import AuditLogger, _jsonfast
    from jwt_audit_middleware.sinks import JSONLinesHandler, SQLAuditHandler

    assert _jsonfast.FAST is (sys.argv[1] == "orjson"), _jsonfast.FAST
    directory = sys.argv[2]
    logger = logging.getLogger("jwt_audit.identity")
    logger.propagate = False
    lines = JSONLinesHandler(directory + "/audit.jsonl")
    store = SQLAuditHandler("sqlite:///" + directory + "/audit.db")
    logger.addHandler(lines)
    logger.addHandler(store)
    audit = AuditLogger(logger)
    class Odd:
        def __str__(self):
            return "odd\\u2029"

    values = [None, 0.412, 1e-05, math.nan, "x\\u2028y\\x85z", 2**70, ["a", 1.5], b"\\x00",
              {"nested": {"deep": [True, -0.0]}}, Odd()]
    for i, value in enumerate(values):
        event = audit.build_event("login_succeeded", "allowed", subject=f"user{i}")
        event["time"] = "2025-05-20T10:00:00.123Z"
        event["request_id"] = f"r{i}"
        event["claims"] = {"value": value} if i % 2 else {}
        event["odd"] = value
        audit.emit(event)
    lines.close()
    store.close()
    """
)


@needs_orjson
def test_the_sinks_write_the_same_bytes_with_and_without_orjson(tmp_path: Path) -> None:
    script = tmp_path / "emit.py"
    script.write_text(SCRIPT)
    outputs = {}
    for mode in ("orjson", "stdlib"):
        directory = tmp_path / mode
        directory.mkdir()
        subprocess.run(
            [sys.executable, str(script), mode, str(directory)],
            check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            timeout=120,
        )
        lines = (directory / "audit.jsonl").read_bytes()
        import sqlite3

        with sqlite3.connect(directory / "audit.db") as db:
            data = [
                row[0]
                for row in db.execute("SELECT data FROM jwt_audit_events ORDER BY request_id")
            ]
        outputs[mode] = (lines, data)
    assert outputs["orjson"] == outputs["stdlib"]
    lines, data = outputs["orjson"]
    assert len(lines.splitlines()) == len(data) == 10
    assert b"\\u2028" in lines  # still escaped in lines
    assert b"\xe2\x80\xa8" not in lines
    assert all(json.loads(line)["schema"] == "jwt-audit/1" for line in lines.splitlines())
