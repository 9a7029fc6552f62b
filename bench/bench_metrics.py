"""What metrics=... adds to a cached request, in-process, in one run.

    python bench/bench_metrics.py [--batches 15] [--requests 20000] [--wsgi]
    python bench/bench_metrics.py --multiprocess     # PROMETHEUS_MULTIPROC_DIR mode
    python bench/bench_metrics.py --callgrind        # instructions, off and on

The same middleware twice around a bare ASGI app (or WSGI app with ``--wsgi``),
with and without ``metrics=CollectorRegistry()``, called directly on one
cached HS256 token (a cache hit costs the same whatever the algorithm), no
audit handler; the batches of the two alternate, each after a full garbage
collection, and the figure is the difference of the medians, with the spread
of the per-pair differences beside it.  Times are the thread's CPU time
(``time.thread_time``): on a shared machine, waiting for a core is not counted.
``--callgrind`` counts instructions instead (valgrind, noise-free): N1 and N2
requests with metrics off and on, the difference per request.  ``--multiprocess`` re-runs itself with
``PROMETHEUS_MULTIPROC_DIR`` set to a scratch directory, where each ``inc()``
also writes a memory-mapped file.

Until ``Lifecycle`` wires the metrics itself, this script calls
``metrics.instrument()`` (idempotent) as it will.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jwt


def build(metrics: bool, wsgi: bool) -> Any:
    from prometheus_client import CollectorRegistry

    from jwt_audit_middleware import JWTAuditMiddleware, JWTAuditWSGIMiddleware
    from jwt_audit_middleware.metrics import instrument

    options: dict[str, Any] = {"algorithms": ["HS256"], "secret": SECRET}
    if metrics:
        options["metrics"] = CollectorRegistry()
    if wsgi:
        middleware: Any = JWTAuditWSGIMiddleware(bare_wsgi, **options)
    else:
        middleware = JWTAuditMiddleware(bare_asgi, **options)
    lifecycle = middleware._lifecycle
    instrument(lifecycle.settings.metrics, lifecycle.audit, lifecycle.gate)
    return middleware


SECRET = b"metrics-bench-secret-of-32-bytes!!"
TOKEN = jwt.encode({"sub": "alice", "iat": 1_700_000_000, "exp": 4_000_000_000}, SECRET)


async def bare_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def bare_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


def asgi_runner(app: Any) -> Any:
    headers = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"user-agent", b"bench")]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    async def run(n: int) -> float:
        start = time.thread_time()
        for _ in range(n):
            scope = {
                "type": "http", "method": "GET", "path": "/orders", "root_path": "",
                "headers": headers, "client": ("127.0.0.1", 5000), "query_string": b"",
            }  # fmt: skip
            await app(scope, receive, send)
        return time.thread_time() - start

    loop = asyncio.new_event_loop()
    return lambda n: loop.run_until_complete(run(n))


def wsgi_runner(app: Any) -> Any:
    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    def run(n: int) -> float:
        start = time.thread_time()
        for _ in range(n):
            environ = {
                "REQUEST_METHOD": "GET", "PATH_INFO": "/orders", "SCRIPT_NAME": "",
                "QUERY_STRING": "", "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": "bench",
                "HTTP_AUTHORIZATION": f"Bearer {TOKEN}", "wsgi.url_scheme": "http",
            }  # fmt: skip
            body = app(environ, start_response)
            for _chunk in body:
                pass
            body.close()
        return time.thread_time() - start

    return run


def measure(args: argparse.Namespace) -> None:
    import logging

    logging.getLogger("jwt_audit").propagate = False  # no handler: the event is built, not written
    runner = wsgi_runner if args.wsgi else asgi_runner
    runs = {"off": runner(build(False, args.wsgi)), "on": runner(build(True, args.wsgi))}
    for run in runs.values():
        run(2000)  # warm-up; the first request verifies and caches
    figures: dict[str, list[float]] = {"off": [], "on": []}
    for batch in range(args.batches):
        order = ("off", "on") if batch % 2 == 0 else ("on", "off")
        for name in order:
            gc.collect()
            figures[name].append(runs[name](args.requests) / args.requests * 1e6)
    off, on = statistics.median(figures["off"]), statistics.median(figures["on"])
    deltas = sorted(b - a for a, b in zip(figures["off"], figures["on"], strict=True))
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "in-memory"
    kind = "WSGI" if args.wsgi else "ASGI"
    print(f"{kind}, cached HS256 request, no audit handler, prometheus_client {mode}:")
    print(f"  metrics off  {off:6.2f} µs   (median of {args.batches} x {args.requests})")
    print(f"  metrics on   {on:6.2f} µs")
    print(
        f"  added        {on - off:+6.2f} µs   (pairwise differences: "
        f"min {deltas[0]:+.2f}, median {statistics.median(deltas):+.2f}, max {deltas[-1]:+.2f})"
    )


def serve(args: argparse.Namespace) -> None:
    """Under callgrind: one warm-up request, then ``--serve`` cached ones."""
    import logging

    logging.getLogger("jwt_audit").propagate = False
    runner = wsgi_runner if args.wsgi else asgi_runner
    run = runner(build(args.metrics == "on", args.wsgi))
    run(1)
    run(args.serve)


def instructions(args: argparse.Namespace, metrics: str, requests: int) -> int:
    import re

    with tempfile.TemporaryDirectory() as out:
        argv = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
            sys.executable, __file__, "--serve", str(requests), "--metrics", metrics,
        ] + (["--wsgi"] if args.wsgi else [])  # fmt: skip
        subprocess.run(
            argv, check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"}
        )
        with open(f"{out}/cg.out") as handle:
            totals = re.search(r"^totals: (\d+)", handle.read(), re.MULTILINE)
    assert totals is not None
    return int(totals.group(1))


def callgrind(args: argparse.Namespace) -> None:
    n1, n2 = 500, 2500
    per = {}
    for metrics in ("off", "on"):
        first, second = instructions(args, metrics, n1), instructions(args, metrics, n2)
        per[metrics] = (second - first) / (n2 - n1)
    kind = "WSGI" if args.wsgi else "ASGI"
    print(
        f"instructions per cached {kind} request: metrics off {per['off']:,.0f}, "
        f"on {per['on']:,.0f} ({per['on'] - per['off']:+,.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--wsgi", action="store_true")
    parser.add_argument("--multiprocess", action="store_true")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics", choices=("off", "on"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args)
        return
    if args.callgrind:
        callgrind(args)
        return
    if args.multiprocess and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        with tempfile.TemporaryDirectory() as directory:
            argv = [a for a in sys.argv if a != "--multiprocess"]
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
            subprocess.run([sys.executable, *argv], env=env, check=True)
        return
    measure(args)


if __name__ == "__main__":
    main()
