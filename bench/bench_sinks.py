"""Audit sinks: per-event cost on the request thread, and sustained events/s.

    python bench/bench_sinks.py [--events 50000]

Request thread: median ns of ``handler.handle(record)`` (what the logger calls
per event) over batches, the writer running.  In a request: what attaching the
sink adds to a cached ``JWTAuditMiddleware`` request in one event loop, until its
event is written (the writer thread shares the GIL with the loop); batches with
and without the sink alternate.  Sustained: events emitted through
``AuditLogger.emit`` as fast as one thread can, until the handler has written
them all (``close()``), divided by the wall time.  PostgreSQL / MariaDB rows run
when ``JWTAUDIT_TEST_POSTGRES_URL`` / ``JWTAUDIT_TEST_MARIADB_URL`` are set.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from bench_inprocess import asgi_caller, bare_asgi

from jwt_audit_middleware import AuditLogger, JWTAuditMiddleware
from jwt_audit_middleware.audit import make_record
from jwt_audit_middleware.sinks import JSONLinesHandler, SQLAuditHandler
from jwt_audit_middleware.sinks._worker import BackgroundHandler
from jwt_audit_middleware.testing import SigningKey

EVENT: dict[str, Any] = {
    "schema": "jwt-audit/1",
    "event": "access",
    "outcome": "allowed",
    "reason": None,
    "time": "2025-05-20T10:00:00.123Z",
    "request_id": "3f2a9c0e1b7d4a5f8e6c2b1a",
    "method": "GET",
    "path": "/orders/42",
    "protocol": "http",
    "status": 200,
    "duration_ms": 0.412,
    "client_ip": "203.0.113.7",
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) bench/1",
    "subject": "alice",
    "issuer": "https://idp.example.com/",
    "token_id": "b7c1d2e3f4a5",
    "audience": ["orders-api"],
    "scopes": ["orders:read", "orders:write"],
    "alg": "RS256",
    "kid": "key-2025",
    "token_fingerprint": "sha256:0123456789abcdef",
    "detail": None,
    "claims": {},
}


def request_thread_ns(handler: BackgroundHandler, rounds: int = 7, batch: int = 2000) -> float:
    logger = logging.getLogger("jwt_audit.bench")
    records = [make_record(logger, logging.INFO, ("access",), dict(EVENT)) for _ in range(batch)]
    medians = []
    for _ in range(rounds):
        handler.drain(120)
        started = time.perf_counter_ns()
        for record in records:
            handler.handle(record)
        medians.append((time.perf_counter_ns() - started) / batch)
    handler.drain(120)
    return statistics.median(medians)


def in_a_request(handler: BackgroundHandler, requests: int = 10_000, rounds: int = 7) -> float:
    """µs the sink adds to a cached ASGI request, its writer's work included."""
    key = SigningKey.generate("HS256", kid="bench")
    run = asgi_caller(JWTAuditMiddleware(bare_asgi, **key.options()), [key.token(scope="read")])
    audit = logging.getLogger("jwt_audit")
    propagate, audit.propagate = audit.propagate, False
    loop = asyncio.new_event_loop()

    def batch(attached: bool) -> float:
        if attached:
            audit.addHandler(handler)
        started = time.perf_counter()
        loop.run_until_complete(run(requests))
        if attached:
            audit.removeHandler(handler)
            handler.drain(120)  # until the batch's last event is written
        return (time.perf_counter() - started) / requests * 1e6

    try:
        batch(True)  # warm-up: creates the table, opens the file
        without, attached = [], []
        for _ in range(rounds):
            without.append(batch(False))
            attached.append(batch(True))
    finally:
        loop.close()
        audit.propagate = propagate
    return statistics.median(attached) - statistics.median(without)


def sustained(make: Callable[[], BackgroundHandler], events: int) -> tuple[float, dict[str, int]]:
    handler = make()
    logger = logging.getLogger(f"jwt_audit.bench.{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    audit = AuditLogger(logger)
    audit.emit(dict(EVENT))  # creates the table, opens the connection
    handler.drain(120)
    started = time.perf_counter()
    for i in range(events):
        event = dict(EVENT)
        event["request_id"] = f"bench-{i}"
        audit.emit(event)
    handler.close()
    elapsed = time.perf_counter() - started
    return events / elapsed, handler.stats()


def drop(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        db.execute(sa.text(f"DROP TABLE IF EXISTS {table}_schema"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument(
        "--sinks",
        default="jsonl,sqlite,postgresql,mariadb",
        help="comma-separated subset of jsonl,sqlite,postgresql,mariadb",
    )
    args = parser.parse_args()
    chosen = set(args.sinks.split(","))
    directory = tempfile.mkdtemp(prefix="jwt-audit-bench-")
    targets: list[tuple[str, Callable[[], BackgroundHandler], Callable[[], None], float]] = []
    size = args.events + 10
    if "jsonl" in chosen:
        targets.append(
            (
                "JSON lines",
                lambda: JSONLinesHandler(os.path.join(directory, "a.jsonl"), queue_size=size),
                lambda: None,
                0,
            )
        )
    if "sqlite" in chosen:
        targets.append(
            (
                "SQLite (WAL)",
                lambda: SQLAuditHandler(
                    f"sqlite:///{directory}/{uuid.uuid4().hex}.db", queue_size=size
                ),
                lambda: None,
                20_000,
            )
        )
    for key, name, variable, target in (
        ("postgresql", "PostgreSQL", "JWTAUDIT_TEST_POSTGRES_URL", 10_000),
        ("mariadb", "MariaDB", "JWTAUDIT_TEST_MARIADB_URL", 0),
    ):
        url = os.environ.get(variable)
        if url and key in chosen:
            table = "bench_" + uuid.uuid4().hex[:8]
            targets.append(
                (
                    name,
                    lambda url=url, table=table: SQLAuditHandler(url, table=table, queue_size=size),
                    lambda url=url, table=table: drop(url, table),
                    target,
                )
            )
    try:
        from jwt_audit_middleware import _jsonfast
    except ImportError:  # an older checkout
        encoder = "stdlib json"
    else:
        encoder = "orjson" if _jsonfast.FAST else "stdlib json"
    print(f"JSON encoder: {encoder}")
    print(f"{args.events} events per sink; request thread = median of handler.handle(record)\n")
    print(
        f"{'sink':<14} {'request thread':>15} {'in a request':>13} {'sustained':>16}"
        f" {'target':>14}  spilled"
    )
    for name, make, cleanup, target in targets:
        probe = make()
        try:
            per_event = request_thread_ns(probe)
            added = in_a_request(probe)
        finally:
            probe.close()
        rate, stats = sustained(make, args.events)
        cleanup()
        goal = f">= {target:,} /s" if target else "-"
        print(
            f"{name:<14} {per_event / 1000:>12.2f} µs {added:>10.1f} µs {rate:>12,.0f} /s {goal:>14}"
            f"  {stats['spilled']}"
        )
    print("\nrequest-thread target: <= 5 µs per event")


if __name__ == "__main__":
    main()
