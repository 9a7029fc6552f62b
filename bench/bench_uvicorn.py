"""End to end: uvicorn (one worker) with and without the middleware, under load.

    python bench/bench_uvicorn.py [--seconds 10] [--connections 32] [--rounds 3]

Serves the same small Starlette app on 127.0.0.1 bare, behind
``JWTAuditMiddleware`` with the audit events written as JSON lines to a file by
``JSONLinesHandler`` (the target's configuration), and behind the middleware with
no handler (events built and dropped: the middleware's own share), valid tokens
throughout, and loads each with ``wrk`` (Debian package ``wrk``) for a bounded
time.  Rounds alternate the servers so drift on a shared machine hits them all;
the table shows the median requests/s and the ratio to bare.  Only loopback addresses are ever targeted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP_MODULE = "bench_uvicorn_app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def serve(app: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", f"{APP_MODULE}:{app}",
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=HERE, env=env)
    wait_ready(port, time.monotonic() + 20)
    return process, port


def load(port: int, seconds: int, connections: int, token: str) -> float:
    output = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "-H",
            f"Authorization: Bearer {token}",
            f"http://127.0.0.1:{port}/hello",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"non-2xx answers under load:\n{output}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    return float(match.group(1))


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2

    from jwt_audit_middleware.testing import SigningKey

    key = SigningKey.generate("RS256", kid="bench")
    token = key.token(expires_in=3600, scope="read")
    workdir = Path(tempfile.mkdtemp(prefix="jwt-audit-bench-"))
    events = workdir / "events.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "BENCH_PUBLIC_KEY": key.public_pem or "",
        "BENCH_EVENTS": str(events),
    }
    variants = {  # name: (app, extra environment)
        "Starlette, no auth": ("bare", {}),
        "+ JWTAuditMiddleware, JSON-lines file": ("audited", {}),
        "+ JWTAuditMiddleware, no handler": ("audited", {"BENCH_NO_HANDLER": "1"}),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (app, extra) in variants.items():
            process, port = serve(app, {**env, **extra})
            try:
                load(port, 2, args.connections, token)  # warm-up
                results[name].append(load(port, args.seconds, args.connections, token))
            finally:
                stop(process)
    medians = {name: statistics.median(figures) for name, figures in results.items()}
    bare = medians["Starlette, no auth"]
    print(
        f"\nuvicorn, 1 worker, wrk -c {args.connections} -d {args.seconds}s, {args.rounds} rounds"
    )
    print(f"{'app':40} {'requests/s (median)':>20} {'of bare':>8}  rounds")
    for name, median in medians.items():
        rounds = ", ".join(f"{r:,.0f}" for r in results[name])
        print(f"{name:40} {median:>20,.0f} {median / bare:>8.0%}  {rounds}")
    audited = medians["+ JWTAuditMiddleware, JSON-lines file"]
    print(
        f"\nwith the middleware and its audit file: {audited / bare:.0%} of the bare app's "
        "throughput (target ≥ 85%)"
    )
    lines = sum(1 for _ in events.open()) if events.exists() else 0
    print(f"audit events written: {lines:,} JSON lines")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
