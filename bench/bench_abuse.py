"""Abuse detection's cost on a cached request, and its Redis round trips (issue 15).

    python bench/bench_abuse.py [--batches 15] [--quick] [--redis-url redis://127.0.0.1:6379/0]

One table: a cached RS256 request through ``JWTAuditMiddleware`` called in-process
(``await app(scope, receive, send)``, as ``bench_inprocess.py`` does: interleaved
batches, each after a full garbage collection, median of the batches, events
queued by a handler as the sinks do) with abuse detection off, on in process
memory, and on with ``state_url`` naming Redis.  The columns: µs per request,
the middleware's overhead over the bare app, the ratio of each request to the
request with detection off (target: in memory at most 1.25 times) and the Redis round trips
per request (target ≤ 1).

Round trips are counted by Redis itself: the calls of the commands a client
sends (``EVALSHA``, ``EVAL``, ``SCRIPT``, ``PING``, ``CLIENT``, ``HELLO``,
``SELECT``, from ``INFO commandstats``) over a separate run of counted
requests; the commands a Lua script runs inside one ``EVALSHA`` are shown apart
(they cost no round trip).  Without ``--redis-url`` a private ``redis-server``
is started on a free port (``--save '' --appendonly no``) and stopped at the
end; without either, the Redis row is skipped.  Connecting is given 2 s
(``socket_connect_timeout`` in the URL: every event loop connects afresh here),
the probe keeps its own deadline.  A lost store (probes answered from memory)
is reported: those figures would not be Redis's.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inprocess import QueueingHandler, asgi_caller, bare_asgi, per_request

from jwt_audit_middleware import JWTAuditMiddleware
from jwt_audit_middleware.testing import SigningKey

#: What a client sends, one round trip each; everything else a script runs inside EVALSHA.
CLIENT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "script", "ping", "client",
                   "hello", "select")  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(url: str | None) -> Iterator[str | None]:
    """``url``, or a private redis-server's URL for the run, or ``None`` when there is none."""
    if url is not None:
        yield url
        return
    binary = os.environ.get("JWTAUDIT_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        print("no redis-server and no --redis-url: the Redis row is skipped", file=sys.stderr)
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            import redis

            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


class Commands:
    """Redis's own count of the commands it ran (``INFO commandstats``)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)

    def calls(self) -> dict[str, tuple[int, int]]:
        """Calls and µs spent in Redis, by command."""
        stats = self.client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()
        }

    def delta(self, run: Callable[[], Any]) -> tuple[int, int, int]:
        """Round trips (client commands), in-script commands and µs in Redis of ``run()``."""
        before = self.calls()
        run()
        after = self.calls()
        calls, usec = after.get("info", (1, 0))
        after["info"] = (calls - 1, usec)  # our own INFO
        changed = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after}
        trips = sum(n for k, n in changed.items() if k in CLIENT_COMMANDS)
        inside = sum(n for k, n in changed.items() if k not in CLIENT_COMMANDS and k != "info")
        spent = sum(after[k][1] - before.get(k, (0, 0))[1] for k in CLIENT_COMMANDS if k in after)
        return trips, inside, spent


class StateEvents(logging.Handler):
    """Counts ``state_event`` records: a lost store means memory answered, not Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "jwt_audit", None)
        if isinstance(event, dict) and event.get("event") == "state_event":
            self.outcomes.append(f"{event.get('outcome')} {event.get('reason') or ''}".strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="fewer requests per batch")
    parser.add_argument("--redis-url", help="an existing Redis (default: start a private one)")
    args = parser.parse_args()
    # many short batches, interleaved: a burst of load on a shared machine moves a few
    # batches of every stack, and the medians keep the ratio
    n = 1000 if args.quick else 5000
    n_redis = n // 10  # a round trip each: fewer, or Redis dominates the run's time

    audit = logging.getLogger("jwt_audit")
    audit.addHandler(QueueingHandler())
    watcher = StateEvents()
    audit.addHandler(watcher)
    audit.propagate = False

    key = SigningKey.generate("RS256", kid="bench")
    tokens = [key.token(sub=f"user-{i}", expires_in=3600) for i in range(64)]
    options = key.options(cache_size=4096)
    apps: dict[str, Any] = {
        "bare app": bare_asgi,
        "detection off": JWTAuditMiddleware(bare_asgi, **options),
        "on, in memory": JWTAuditMiddleware(bare_asgi, **options, abuse_detection=True),
    }
    with redis_server(args.redis_url) as url:
        if url is not None:
            apps["on, Redis"] = JWTAuditMiddleware(
                bare_asgi, **options, abuse_detection=True, state_url=_connect_outside(url)
            )
        runs = {
            name: (asgi_caller(app, tokens), n_redis if name == "on, Redis" else n)
            for name, app in apps.items()
        }
        print(f"measuring {len(runs)} stacks, {args.batches} batches ...", file=sys.stderr)
        us = per_request(runs, args.batches)
        timing_events = list(watcher.outcomes)
        trips: dict[str, tuple[float, float, float]] = {}
        if url is not None:
            counter = Commands(url)
            for name in ("on, in memory", "on, Redis"):
                trips[name] = count_trips(counter, asgi_caller(apps[name], tokens), watcher)
    print_table(us, trips, timing_events)
    return 0


def count_trips(
    counter: Commands, run: Callable[[int], Any], watcher: StateEvents, requests: int = 1000
) -> tuple[float, float, float]:
    """Round trips, in-script commands and µs in Redis per request, Redis answering throughout.

    A run during which the store was lost (its probes answered from memory) is
    not counted: once the store is back, the run is made again (5 tries).
    """
    for _ in range(5):
        deadline = time.monotonic() + 5
        while watcher.outcomes and not watcher.outcomes[-1].startswith("store_restored"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        seen = len(watcher.outcomes)
        gc.collect()
        made, inside, spent = counter.delta(lambda: _run_async(run, requests))
        if len(watcher.outcomes) == seen:
            return made / requests, inside / requests, spent / requests
    raise SystemExit("the Redis store was lost in every counting run: no round trips to count")


def _connect_outside(url: str) -> str:
    """``url`` with connecting kept out of the probe's deadline, as in a long-running server.

    Each event loop gets its own asyncio client, so the benchmark's loops connect
    afresh; a first connection can take longer than the probe's few milliseconds
    (redis-py's handshake), which would measure a fallback to memory instead.
    """
    if "socket_connect_timeout=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "socket_connect_timeout=2"


def _run_async(run: Callable[[int], Any], count: int) -> None:
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run(count))
    finally:
        loop.close()


def print_table(
    us: dict[str, float], trips: dict[str, tuple[float, float, float]], lost: list[str]
) -> None:
    bare, off = us["bare app"], us["detection off"]
    print("\ncached RS256 request through JWTAuditMiddleware, in-process (median of batches)")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus\n")
    header = (
        f"{'abuse detection':16} {'µs/request':>10} {'overhead µs':>11} {'÷ off':>7}"
        f" {'Redis round trips/req':>22} {'in-script cmds/req':>19} {'µs in Redis/req':>16}"
    )
    print(header)
    print("-" * len(header))
    for name, value in us.items():
        if name == "bare app":
            print(f"{name:16} {value:10.1f}")
            continue
        trip, inside, spent = trips.get(name, (0.0, 0.0, 0.0))
        print(
            f"{name:16} {value:10.1f} {value - bare:11.1f} {value / off:6.2f}×"
            f" {trip:22.2f} {inside:19.2f} {spent:16.1f}"
        )
    memory = us["on, in memory"]
    print(
        f"\nin memory: {memory / off:.2f}× the request with detection off (target ≤ 1.25×),"
        f" +{memory - off:.1f} µs"
    )
    if "on, Redis" in trips:
        print(f"Redis: {trips['on, Redis'][0]:.2f} round trips per request (target ≤ 1)")
    if lost:
        print(
            f"WARNING: state events while timing: {lost}: some Redis probes missed their"
            " deadline and were answered from memory (a loaded machine?)"
        )
    elif "on, Redis" in us:
        print("no state_event while timing: every Redis probe was answered by Redis")


if __name__ == "__main__":
    sys.exit(main())
