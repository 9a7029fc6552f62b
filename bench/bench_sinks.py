"""Audit sinks: per-event cost on the request thread, and sustained events/s.

    python bench/bench_sinks.py [--events 50000]
    python bench/bench_sinks.py --chain [--events 50000]   # the cost of chain=True (issue 16)

Request thread: median ns of ``handler.handle(record)`` (what the logger calls
per event) over batches, the writer running.  In a request: what attaching the
sink adds to a cached ``JWTAuditMiddleware`` request in one event loop, until its
event is written (the writer thread shares the GIL with the loop); batches with
and without the sink alternate.  Sustained: events emitted through
``AuditLogger.emit`` as fast as one thread can, until the handler has written
them all (``close()``), divided by the wall time.  PostgreSQL / MariaDB rows run
when ``JWTAUDIT_TEST_POSTGRES_URL`` / ``JWTAUDIT_TEST_MARIADB_URL`` are set.

``--chain``: each sink with and without ``chain=True`` (rounds alternate, medians):
what chaining adds on the request thread (target <= 0.5 µs an event), sustained
events/s chained against unchained (target within 20%), and how many events a
second ``jwt-audit verify-log`` checks from a file (target >= 200,000).
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

from jwt_audit_middleware import AuditLogger, JWTAuditMiddleware, verify_log
from jwt_audit_middleware.audit import make_record
from jwt_audit_middleware.chain import ChainKey
from jwt_audit_middleware.sinks import JSONLinesHandler, SQLAuditHandler
from jwt_audit_middleware.sinks._worker import BackgroundHandler
from jwt_audit_middleware.testing import SigningKey
from jwt_audit_middleware.verify_log import Progress

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


def verify_rate(directory: str, events: int, key: bytes | None) -> tuple[float, float]:
    """Events a second ``verify-log`` checks in a chained file of ``events`` lines.

    Per second of wall time, and per second of this process's CPU time (what an
    idle machine would show; shared CI machines are often busy).
    """
    path = os.path.join(directory, f"verify-{uuid.uuid4().hex[:6]}.jsonl")
    handler = JSONLinesHandler(path, queue_size=events + 10, chain=True, chain_key=key)
    logger = logging.getLogger(f"jwt_audit.bench.{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    audit = AuditLogger(logger)
    for i in range(events):
        event = dict(EVENT)
        event["request_id"] = f"bench-{i}"
        audit.emit(event)
    handler.close()
    rates, cpu_rates = [], []
    chain_key = None if key is None else ChainKey(key)
    for _ in range(5):
        started, cpu = time.perf_counter(), time.process_time()
        result = verify_log.check_files([path], chain_key, Progress(None))
        rates.append(result.records / (time.perf_counter() - started))
        cpu_rates.append(result.records / (time.process_time() - cpu))
        assert not result.findings
        assert len(result.streams) == 1
    os.remove(path)
    return statistics.median(rates), statistics.median(cpu_rates)


def enqueued_ns(handler: BackgroundHandler, rounds: int = 7, batch: int = 2000) -> float:
    """Median ns of ``handler.enqueued(record)``: the request thread's own work, no writer."""
    logger = logging.getLogger("jwt_audit.bench")
    records = [make_record(logger, logging.INFO, ("access",), dict(EVENT)) for _ in range(batch)]
    enqueued = handler.enqueued
    medians = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for record in records:
            enqueued(record)
        medians.append((time.perf_counter_ns() - started) / batch)
    return statistics.median(medians)


def chain_costs(
    name: str, make: Callable[..., BackgroundHandler], events: int, rounds: int = 3
) -> None:
    """One sink, unchained and chained: request thread, sustained; rounds alternate."""
    own: dict[bool, list[float]] = {False: [], True: []}
    per_event: dict[bool, list[float]] = {False: [], True: []}
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu_rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for chained in (False, True):
            probe = make(chained)
            try:
                own[chained].append(enqueued_ns(probe))
                per_event[chained].append(request_thread_ns(probe))
            finally:
                probe.close()
            cpu = time.process_time()
            rates[chained].append(sustained(lambda chained=chained: make(chained), events)[0])
            cpu_rates[chained].append(events / (time.process_time() - cpu))
    own_plain, own_chained = (statistics.median(own[c]) for c in (False, True))
    plain_ns, chained_ns = (statistics.median(per_event[c]) for c in (False, True))
    plain_rate, chained_rate = (statistics.median(rates[c]) for c in (False, True))
    plain_cpu, chained_cpu = (statistics.median(cpu_rates[c]) for c in (False, True))
    print(
        f"{name:<14} {own_plain / 1000:>6.2f} {own_chained / 1000:>6.2f}"
        f" {(own_chained - own_plain) / 1000:>+6.2f} µs"
        f" {plain_ns / 1000:>7.2f} {chained_ns / 1000:>6.2f}"
        f" {(chained_ns - plain_ns) / 1000:>+6.2f} µs"
        f" {plain_rate:>9,.0f} {chained_rate:>9,.0f} /s {chained_rate / plain_rate - 1:>+7.1%}"
        f"  per CPU second {plain_cpu:>9,.0f} {chained_cpu:>9,.0f} /s"
        f" {chained_cpu / plain_cpu - 1:>+7.1%}"
    )


def chain_main(args: argparse.Namespace, directory: str) -> None:
    """``--chain``: what chaining costs the sinks, and how fast verify-log checks."""
    size = args.events + 10
    makers: list[tuple[str, Callable[..., BackgroundHandler], Callable[[], None]]] = []
    chosen = set(args.sinks.split(","))
    if "jsonl" in chosen:
        makers.append(
            (
                "JSON lines",
                lambda chained: JSONLinesHandler(
                    os.path.join(directory, f"{uuid.uuid4().hex}.jsonl"),
                    queue_size=size,
                    chain=chained,
                ),
                lambda: None,
            )
        )
    if "sqlite" in chosen:
        makers.append(
            (
                "SQLite (WAL)",
                lambda chained: SQLAuditHandler(
                    f"sqlite:///{directory}/{uuid.uuid4().hex}.db", queue_size=size, chain=chained
                ),
                lambda: None,
            )
        )
    url = os.environ.get("JWTAUDIT_TEST_POSTGRES_URL")
    if url and "postgresql" in chosen:
        table = "bench_" + uuid.uuid4().hex[:8]
        makers.append(
            (
                "PostgreSQL",
                lambda chained: SQLAuditHandler(url, table=table, queue_size=size, chain=chained),
                lambda: drop(url, table),
            )
        )
    print(f"{args.events} events per sustained run; medians of 3 alternating rounds")
    print("own work: enqueued() alone; handle(): with the writer running (its GIL share)")
    print("sustained per CPU second: events / CPU time of both threads (steadier when busy)\n")
    print(
        f"{'':<14} {'request thread, own work':>24} {'handle(), writer running':>24}"
        f" {'sustained events/s':>27}"
    )
    print(
        f"{'sink':<14} {'plain':>6} {'chain':>6} {'added':>9} {'plain':>7} {'chain':>6}"
        f" {'added':>9} {'plain':>9} {'chain':>9} {'':>2} {'change':>7}"
    )
    for name, make, cleanup in makers:
        chain_costs(name, make, args.events)
        cleanup()
    print("\ntargets: added on the request thread <= 0.5 µs; sustained within 20% of plain\n")
    for label, key in (("SHA-256", None), ("HMAC-SHA256 (chain_key)", b"k" * 32)):
        rate, cpu_rate = verify_rate(directory, max(args.events, 200_000), key)
        print(
            f"verify-log, one file, {label}: {rate:,.0f} events/s"
            f" ({cpu_rate:,.0f} per CPU second; target >= 200,000)"
        )


def drop(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        db.execute(sa.text(f"DROP TABLE IF EXISTS {table}_schema"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--chain", action="store_true", help="the cost of chain=True (issue 16)")
    parser.add_argument(
        "--sinks",
        default="jsonl,sqlite,postgresql,mariadb",
        help="comma-separated subset of jsonl,sqlite,postgresql,mariadb",
    )
    args = parser.parse_args()
    chosen = set(args.sinks.split(","))
    directory = tempfile.mkdtemp(prefix="jwt-audit-bench-")
    if args.chain:
        chain_main(args, directory)
        return
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
