"""JWKS URL vs static key: the per-request cost once the keys are warm.

    python bench/bench_jwks.py [--requests 4000] [--batches 15]

Both middlewares verify the same RS256/ES256 tokens in-process (ASGI
``await app(scope, receive, send)`` on one event loop); one has the public key
configured, the other fetches it from a JWKS URL served on 127.0.0.1.  Shown:
the median over alternating batches of microseconds per request, with the verified-token
cache on (repeated tokens, the common case) and off (every request verifies a
signature), and the number of fetches the JWKS server saw (one: the start-up).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jwt_audit_middleware import JWTAuditMiddleware
from jwt_audit_middleware.testing import SigningKey, jwks_document


def serve(document: dict[str, Any]) -> tuple[ThreadingHTTPServer, list[int]]:
    body = json.dumps(document).encode()
    hits = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[0] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, hits


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def run(middleware: Any, tokens: list[str], n: int) -> float:
    headers = [[(b"authorization", f"Bearer {t}".encode())] for t in tokens]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    count = len(headers)
    started = time.perf_counter()
    for i in range(n):
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/r",
            "headers": headers[i % count],
            "client": ("127.0.0.1", 5000),
        }
        await middleware(scope, receive, send)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--batches", type=int, default=15)
    args = parser.parse_args()
    logging.getLogger("jwt_audit").propagate = False  # events built, not printed

    print(f"python {sys.version.split()[0]}, {args.requests} requests x {args.batches} batches")
    print(
        f"{'alg':6} {'cache':6} {'static µs':>10} {'jwks_url µs':>12} {'ratio':>6} {'fetches':>8}"
    )
    for alg in ("RS256", "ES256"):
        key = SigningKey.generate(alg, kid=f"{alg.lower()}-bench")
        httpd, hits = serve(jwks_document(key))
        url = f"http://127.0.0.1:{httpd.server_address[1]}/jwks"
        tokens = [key.token(sub=f"user{i}", expires_in=3600) for i in range(64)]
        for cache_size in (1024, 0):
            before = hits[0]
            static = JWTAuditMiddleware(app, **key.options(cache_size=cache_size))
            remote = JWTAuditMiddleware(app, algorithms=[alg], jwks_url=url, cache_size=cache_size)
            n = args.requests if cache_size else args.requests // 4
            figures: dict[str, list[float]] = {"static": [], "jwks": []}
            for middleware in (static, remote):  # warm-up
                asyncio.run(run(middleware, tokens, 500))
            for _ in range(args.batches):
                figures["static"].append(asyncio.run(run(static, tokens, n)))
                figures["jwks"].append(asyncio.run(run(remote, tokens, n)))
            s, j = statistics.median(figures["static"]), statistics.median(figures["jwks"])
            label = "on" if cache_size else "off"
            print(f"{alg:6} {label:6} {s:10.2f} {j:12.2f} {j / s:6.2f} {hits[0] - before:8d}")
            remote._gate.close()
        httpd.shutdown()
        httpd.server_close()


if __name__ == "__main__":
    main()
