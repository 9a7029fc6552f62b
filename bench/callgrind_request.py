"""Instructions per cached ASGI request, counted by callgrind (noise-free, unlike timers).

    python bench/callgrind_request.py            # runs valgrind twice, prints the figure
    python bench/callgrind_request.py --abuse    # the same with abuse detection in memory

Runs the middleware around a bare ASGI app in one event loop, with no audit
handler (``--sink jsonl`` adds the JSON-lines file), for N1 and N2 cached
requests under ``valgrind --tool=callgrind``; the difference of the two totals
divided by N2 - N1 is what one request costs, start-up excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile


def serve(requests: int, sink: str, abuse: bool) -> None:
    import logging

    import jwt

    from jwt_audit_middleware import JWTAuditMiddleware

    # a fixed HS256 secret and token: key generation's random cost stays out of the
    # count, and a cache hit costs the same whatever the algorithm
    secret = b"callgrind-bench-secret-of-32-bytes!"
    token = jwt.encode({"sub": "alice", "iat": 1_700_000_000, "exp": 4_000_000_000}, secret)
    if sink == "jsonl":
        from jwt_audit_middleware.sinks import JSONLinesHandler

        handler = JSONLinesHandler(os.path.join(tempfile.mkdtemp(), "audit.jsonl"))
        logging.getLogger("jwt_audit").addHandler(handler)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    options = {"abuse_detection": True} if abuse else {}
    middleware = JWTAuditMiddleware(app, algorithms=["HS256"], secret=secret, **options)
    headers = [(b"authorization", f"Bearer {token}".encode()), (b"user-agent", b"bench")]
    scope = {
        "type": "http", "method": "GET", "path": "/orders", "root_path": "",
        "headers": headers, "client": ("127.0.0.1", 5000), "query_string": b"",
    }  # fmt: skip

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def run() -> None:
        await middleware(dict(scope), receive, send)  # the first request verifies and caches
        for _ in range(requests):
            await middleware(dict(scope), receive, send)

    asyncio.run(run())


def count(requests: int, sink: str, abuse: bool) -> int:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
                sys.executable, __file__, "--serve", str(requests), "--sink", sink,
                *(["--abuse"] if abuse else []),
            ],
            check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
        with open(f"{out}/cg.out") as handle:
            totals = re.search(r"^totals: (\d+)", handle.read(), re.MULTILINE)
    assert totals is not None
    return int(totals.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sink", choices=("none", "jsonl"), default="none")
    parser.add_argument("--abuse", action="store_true", help="abuse_detection=True (in memory)")
    parser.add_argument("--n1", type=int, default=500)
    parser.add_argument("--n2", type=int, default=2500)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.sink, args.abuse)
        return
    first = count(args.n1, args.sink, args.abuse)
    second = count(args.n2, args.sink, args.abuse)
    per_request = (second - first) / (args.n2 - args.n1)
    what = f"sink={args.sink}" + (", abuse_detection" if args.abuse else "")
    print(f"instructions per cached ASGI request ({what}): {per_request:,.0f}")


if __name__ == "__main__":
    main()
