"""The hash chain itself: its line format, its key, canonical JSON, streams, migration."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import logging
import os
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_sinks_sql import server_url
from test_verify_log import KEY, write_events

from jwt_audit_middleware import ConfigurationError
from jwt_audit_middleware.chain import (
    ChainKey,
    canonical_json,
    genesis,
    load_key,
)
from jwt_audit_middleware.cli import main
from jwt_audit_middleware.schema import CHAIN_COLUMNS, SCHEMA_VERSION, event_tables
from jwt_audit_middleware.sinks import JSONLinesHandler, SQLAuditHandler


def run_verify(*args: str) -> int:
    try:
        return main(["verify-log", *args])
    except SystemExit as exc:
        return int(exc.code or 0)


def test_a_chained_line_is_the_formatters_line_plus_four_fields(tmp_path: Path) -> None:
    plain, chained = tmp_path / "plain.jsonl", tmp_path / "chained.jsonl"
    write_events(JSONLinesHandler(plain), 3)
    handler = JSONLinesHandler(chained, chain=True)
    chain_id = handler.chain_id
    write_events(handler, 3)
    before = [json.loads(line) for line in plain.read_text().splitlines()]
    raw = chained.read_bytes().splitlines()
    after = [json.loads(line) for line in raw]
    previous = genesis(str(chain_id), None)
    for seq, (old, new, line) in enumerate(zip(before, after, raw, strict=False), 1):
        assert list(new) == [*old, "chain_id", "seq", "prev_hash", "hash"]
        differ = {*CHAIN_COLUMNS, "time", "logger"}  # another moment, another logger
        assert {k: v for k, v in new.items() if k not in differ} == {
            k: v for k, v in old.items() if k not in differ
        }
        assert (new["chain_id"], new["seq"], new["prev_hash"]) == (chain_id, seq, previous)
        body = line[: line.rindex(b',"hash":"')]
        assert new["hash"] == hashlib.sha256(body).hexdigest()
        previous = new["hash"]
    closing = after[-1]
    assert (closing["event"], closing["outcome"], closing["records"]) == (
        "chain_closed",
        "closed",
        3,
    )
    assert closing["seq"] == 4


def test_hmac_is_rfc_2104_for_any_key_length() -> None:
    for key in (b"k" * 32, b"x" * 64, b"y" * 65, os.urandom(200)):
        for body in (b"", b"a line", os.urandom(5000)):
            assert ChainKey(key).digest(body) == hmac.new(key, body, "sha256").hexdigest().encode()


def test_the_chain_key_never_shows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "correct horse battery staple, 32+ bytes of it"
    key_file = tmp_path / "chain.key"
    key_file.write_text(secret + "\n")
    caplog.set_level(logging.DEBUG)
    handlers = [
        JSONLinesHandler(tmp_path / "a.jsonl", chain=True, chain_key=secret),
        JSONLinesHandler(tmp_path / "b.jsonl", chain=True, chain_key_file=key_file),
        SQLAuditHandler(f"sqlite:///{tmp_path / 'c.db'}", chain=True, chain_key=secret.encode()),
    ]
    shown = []
    for handler in handlers:
        chain = handler._chain
        shown += [repr(handler), str(handler), repr(chain), repr(vars(handler))]
        shown.append(repr(chain._key))  # type: ignore[union-attr]
        with pytest.raises(TypeError):
            pickle.dumps(chain._key)  # type: ignore[union-attr]
        write_events(handler, 3)
    for short in (secret[:20], secret[:20].encode()):
        with pytest.raises(ConfigurationError) as refused:
            load_key(short)
        shown.append(str(refused.value))
    short_file = tmp_path / "short.key"
    short_file.write_text(secret[:20])
    with pytest.raises(ConfigurationError) as refused:
        load_key(chain_key_file=short_file)
    shown += [str(refused.value), caplog.text]
    text = "\n".join(shown)
    assert "ChainKey(<hidden>)" in text
    for part in (secret, secret[:20], secret.encode().hex()[:20]):
        assert part not in text
    assert secret not in (tmp_path / "a.jsonl").read_text()


def test_key_options_are_checked_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="chain_key: a chain key needs chain=True"):
        JSONLinesHandler(tmp_path / "a.jsonl", chain_key=KEY)
    with pytest.raises(ConfigurationError, match="chain_key_file: a chain key needs chain=True"):
        SQLAuditHandler(f"sqlite:///{tmp_path / 'a.db'}", chain_key_file=__file__)
    with pytest.raises(ConfigurationError, match="not both"):
        JSONLinesHandler(tmp_path / "a.jsonl", chain=True, chain_key=KEY, chain_key_file=__file__)
    with pytest.raises(ConfigurationError, match="chain_key_file: cannot read"):
        JSONLinesHandler(tmp_path / "a.jsonl", chain=True, chain_key_file=tmp_path / "none")
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        JSONLinesHandler(tmp_path / "a.jsonl", chain=True, chain_key="short")


def test_canonical_json_is_one_text_whatever_the_key_order() -> None:
    event = {"b": [1, 2.5, {"y": None, "x": True}], "a": "é\u2028😀", "c": {}}
    reordered = {"c": {}, "a": "é\u2028😀", "b": [1, 2.5, {"x": True, "y": None}]}
    text = canonical_json(event)
    assert text == canonical_json(reordered) == canonical_json(json.loads(text))
    assert text == '{"a":"é\u2028😀","b":[1,2.5,{"x":true,"y":null}],"c":{}}'
    # what JSONB gives back for big and negative-zero floats; tuples are lists
    assert canonical_json({"f": 1e16, "g": -0.0, "h": (1e-05,)}) == (
        '{"f":10000000000000000,"g":0.0,"h":[1e-05]}'
    )
    assert canonical_json({1: "a", "2": "b"}) == '{"1":"a","2":"b"}'
    assert canonical_json({"when": datetime.date(2025, 5, 20)}) == '{"when":"2025-05-20"}'


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    return server_url(request.param)


@pytest.fixture
def table_name(url: str) -> Iterator[str]:
    name = "c_" + uuid.uuid4().hex[:12]
    yield name
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text(f"DROP TABLE IF EXISTS {name}_schema"))
        db.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    engine.dispose()


AWKWARD: dict[str, Any] = {
    "big": 1e16,
    "huge": 2.0**70,
    "small": 1e-05,
    "negative_zero": -0.0,
    "third": 1 / 3,
    "int": 2**63 + 1,
    "text": 'é\u2028\u2029😀 \\ "quoted" \t',
    "nested": {"z": [1, {"b": 2, "a": 1}], "a": None},
}


def test_rows_verify_after_the_database_re_encodes_their_json(
    url: str, table_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL's JSONB reorders keys and rewrites numbers; MariaDB keeps text."""
    handler = SQLAuditHandler(url, table=table_name, chain=True)
    logger = logging.getLogger("jwt_audit.chain_test")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.info("x", extra={"jwt_audit": {"event": "custom", "outcome": "allowed", **AWKWARD}})
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert run_verify("--db", url, "--table", table_name) == 0, capsys.readouterr().out
    assert "seq 1-2, closed" in capsys.readouterr().out


def test_a_version_1_table_is_upgraded_and_its_rows_are_an_unchained_prefix(
    url: str, table_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata, events, versions = event_tables(table_name)
    for name in CHAIN_COLUMNS:  # the layout before issue 16
        events._columns.remove(events.c[name])
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    metadata.create_all(engine)
    with engine.begin() as db:
        db.execute(versions.insert().values(version=1, applied_at=datetime.datetime(2025, 1, 1)))
    write_events(SQLAuditHandler(url, table=table_name), 3)  # upgrades; writes NULL chains
    write_events(SQLAuditHandler(url, table=table_name, chain=True), 3)
    with engine.connect() as db:
        stored = db.execute(sa.text(f"SELECT max(version) FROM {table_name}_schema")).scalar()
        columns = {c["name"] for c in sa.inspect(db).get_columns(table_name)}
    engine.dispose()
    assert stored == SCHEMA_VERSION == 2
    assert set(CHAIN_COLUMNS) <= columns
    assert run_verify("--db", url, "--table", table_name) == 0
    out = capsys.readouterr().out
    assert "3 records before the first chained one carry no chain fields" in out
    assert "seq 1-4, closed" in out


def test_each_handler_and_each_forked_child_is_a_stream_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    write_events(JSONLinesHandler(path, chain=True), 3)  # closed ...
    handler = JSONLinesHandler(path, chain=True)  # ... and opened again
    write_events(handler, 2, close=False)
    parent_stream = handler.chain_id
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            assert handler.chain_id != parent_stream
            write_events(handler, 4)
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    write_events(handler, 2)
    assert run_verify("--file", str(path)) == 0
    out = capsys.readouterr().out
    assert "in 3 streams" in out
    assert out.count(", closed,") == 3
    assert f"stream {parent_stream}: seq 1-5, closed" in out  # 4 events and the close


def test_a_handler_that_wrote_nothing_adds_no_stream(tmp_path: Path) -> None:
    JSONLinesHandler(tmp_path / "a.jsonl", chain=True).close()
    assert (tmp_path / "a.jsonl").read_text() == ""
    handler = SQLAuditHandler(f"sqlite:///{tmp_path / 'a.db'}", chain=True)
    handler.close()
    assert handler.stats()["written"] == 0


def test_a_formatter_that_does_not_make_json_objects_is_replaced_when_chaining(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    handler = JSONLinesHandler(path, chain=True)
    handler.setFormatter(logging.Formatter("%(message)s"))
    write_events(handler, 2)
    assert all(json.loads(line)["seq"] for line in path.read_text().splitlines())
    assert run_verify("--file", str(path)) == 0, capsys.readouterr().out


def test_a_record_logged_after_close_starts_a_new_stream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    handler = JSONLinesHandler(path, chain=True)
    write_events(handler, 3)  # and closed
    write_events(handler, 1)  # a late event, e.g. from another atexit hook
    assert run_verify("--file", str(path)) == 0
    out = capsys.readouterr().out
    assert "seq 1-4, closed" in out
    assert "seq 1-1, NOT CLOSED" in out
