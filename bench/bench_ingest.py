"""``jwt-audit ingest`` throughput: JSON-lines events loaded into SQLite and PostgreSQL.

    python bench/bench_ingest.py [--events 200000] [--rounds 3]

Writes a JSON-lines file of request events as ``JSONLinesHandler`` writes them
(one per line, ``JSONFormatter``), then loads it into a fresh table ``--rounds``
times per database and prints the median events/s (target: at least 50,000/s
sustained into SQLite and into PostgreSQL).  PostgreSQL comes from
``JWTAUDIT_TEST_POSTGRES_URL`` (``.ci/services.sh``); it is left out without it.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import uuid

import sqlalchemy as sa

from jwt_audit_middleware.audit import AuditLogger
from jwt_audit_middleware.events import app_event
from jwt_audit_middleware.ingest import ingest
from jwt_audit_middleware.sinks import JSONLinesHandler


def write_events(path: str, count: int) -> None:
    handler = JSONLinesHandler(path, queue_size=count + 10)
    logger = logging.getLogger("bench.ingest")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    audit = AuditLogger(logger)
    for n in range(count):
        event = app_event(
            "access" if n % 10 else "denial",
            "allowed" if n % 10 else "denied",
            reason=None if n % 10 else "expired",
            subject=f"user-{n % 997}",
            client_ip=f"198.51.100.{n % 250}",
            request_id=uuid.uuid4().hex,
            method="GET",
            path=f"/orders/{n % 5000}",
            user_agent="bench/1.0",
            alg="RS256",
            token_fingerprint=f"sha256:{n % 65536:016x}",
        )
        event["status"] = 200 if n % 10 else 401
        event["duration_ms"] = 0.25
        audit.emit(event)
    logger.removeHandler(handler)
    handler.close()


def drop(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for name in (table, f"{table}_schema", f"{table}_ingest"):
            connection.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="bench-ingest-")
    path = os.path.join(directory, "audit.jsonl")
    write_events(path, args.events)
    targets = {"SQLite": f"sqlite:///{directory}/audit-{{}}.db"}
    if os.environ.get("JWTAUDIT_TEST_POSTGRES_URL"):
        targets["PostgreSQL"] = os.environ["JWTAUDIT_TEST_POSTGRES_URL"]
    rates: dict[str, list[float]] = {name: [] for name in targets}
    for round_ in range(args.rounds):
        for name, url in targets.items():  # interleaved: a burst of load hits both alike
            table = f"bench_ingest_{uuid.uuid4().hex[:8]}"
            target = url.format(round_) if name == "SQLite" else url
            stats = ingest(target, [path], table=table)
            assert stats.events == args.events, stats
            rates[name].append(stats.rate)
            if name != "SQLite":
                drop(url, table)
    print(f"jwt-audit ingest, {args.events:,} events, median of {args.rounds} rounds")
    print(f"{'database':<12}{'events/s':>12}   target ≥ 50,000/s")
    for name, values in rates.items():
        print(
            f"{name:<12}{statistics.median(values):>12,.0f}   runs: "
            + ", ".join(f"{v:,.0f}" for v in values)
        )


if __name__ == "__main__":
    main()
