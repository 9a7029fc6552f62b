"""The server's share: what each piece of per-request work costs inside uvicorn, and why.

    python bench/bench_server_share.py [--seconds 4] [--rounds 3] [--connections 32]
        [--loop auto|asyncio|uvloop] [--http auto|h11|httptools] [--variants "a;b;..."]

Serves each variant of ``server_share_app.py`` with uvicorn (one worker, 127.0.0.1
only) under ``wrk -t1`` (Debian package ``wrk``), rounds interleaved so that drift
on a shared machine hits every variant alike, and prints one table (medians over the
rounds):

- ``req/s``, ``of bare``, ``µs added`` (1/req/s against the first row's): what the
  calibration (``../shared/bench/calibrate_uvicorn.py``) prints;
- ``cpu µs``: the server's CPU time (all threads, user + system) per request, and
  ``added`` against the first row: steadier than 1/req/s on a busy machine, where
  1/req/s also counts the time the server waited for a core; ``loop`` / ``other``:
  the event-loop thread's and the other threads' (the sink's writer) time on a
  core, ``wait``: the loop thread's time runnable but waiting for a core
  (``/proc/<pid>/task/*/schedstat``), all µs per request;
- ``in-app µs``: the loop thread's CPU time inside the app (uvicorn's own work
  left out); ``work µs``: a calibration row's work() timed where it runs, and
  ``again`` a second call right after it (``SHARE_REPEAT=1``; warm caches);
- ``gc/1k``, ``gc µs``: the cyclic collector's gen0/gen1/gen2 collections per
  1,000 requests and the time per request spent in them; ``faults``: minor page
  faults per request; ``csw/1k``: context switches per 1,000 requests.

A variant ``SHARE_TIMING=1`` also prints the middleware's steps, µs per call, timed
inside uvicorn and in one event loop with no server (the same app called directly,
``server_share_app.py <app> <requests> <token>``).

A variant is ``label=app[:KEY=VALUE...]`` (``app`` one of ``server_share_app.VARIANTS``;
KEY=VALUE goes into the server's environment: ``SHARE_GC=freeze|disable|t<N>|switch<s>``,
``SHARE_PATCH=lean_line|defer_format``, ``BENCH_NO_HANDLER=1``, ``SHARE_REPEAT=1``).
Every variant gets the same request, a valid RS256 bearer token included.  Put
``PYTHONPATH=<a copy of the package>`` in front to measure another version of it.
"""

from __future__ import annotations

import argparse
import http.client
import json
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
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DEFAULT_VARIANTS = (
    "bare=bare",
    "noop=noop",
    "stdlib_json=stdlib_json",
    "orjson_dumps=orjson_dumps",
    "logrecord_only=logrecord_only",
    "logrecord, no findCaller=record_no_caller",
    "filehandler_line=filehandler_line",
    "ours, no handler=ours:BENCH_NO_HANDLER=1",
    "ours, JSON-lines file=ours",
    "ours, JSON-lines, gc.freeze()=ours:SHARE_GC=freeze",
    "ours, JSON-lines, switchinterval 50ms=ours:SHARE_GC=switch0.05",
    "ours, JSON-lines, lean line=ours:SHARE_PATCH=lean_line",
    "ours, JSON-lines, writer formats=ours:SHARE_PATCH=defer_format",
    "ours, JSON-lines, steps timed=ours:SHARE_TIMING=1",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def counters(port: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/__share")
        return dict(json.loads(connection.getresponse().read()))
    finally:
        connection.close()


def wrk(port: int, seconds: int, connections: int, token: str) -> float:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "-H", f"Authorization: Bearer {token}", f"http://127.0.0.1:{port}/hello"],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    if "Non-2xx" in output:
        raise RuntimeError(f"non-2xx answers under load:\n{output}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    return float(match.group(1))


def parse_variant(spec: str) -> tuple[str, str, dict[str, str]]:
    """``label=app:K=V:...`` (or ``app:K=V...``, labelled by itself)."""
    head = spec.split(":", 1)[0]
    label, rest = spec.split("=", 1) if "=" in head else (spec, spec)
    app, *pairs = rest.split(":")
    return label, app, dict(pair.split("=", 1) for pair in pairs)


def steps(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """µs per call of each timed step between two readings of the counters."""
    out = {}
    for name, (ns, calls) in after["timing"].items():
        ns0, calls0 = before["timing"].get(name, [0, 0])
        out[f"step {name}"] = (ns - ns0) / 1000 / max(calls - calls0, 1)
    return out


def in_process(app: str, env: dict[str, str], requests: int, token: str) -> dict[str, float]:
    """The same app called directly in one event loop, no server: the steps' µs."""
    output = subprocess.run(
        [sys.executable, str(HERE / "server_share_app.py"), app, str(requests), token],
        cwd=HERE, env=env, capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    readings = json.loads(output)
    return steps(readings["before"], readings["after"])


def measure(
    app: str, env: dict[str, str], args: argparse.Namespace, token: str
) -> dict[str, float]:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", f"server_share_app:{app}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--loop", args.loop, "--http", args.http,
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=HERE, env=env)
    try:
        wait_ready(port, process, time.monotonic() + 30)
        wrk(port, args.warmup, args.connections, token)
        before = counters(port)
        rps = wrk(port, args.seconds, args.connections, token)
        after = counters(port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    served = after["requests"] - before["requests"]
    calls = after["work_calls"] - before["work_calls"]
    per = 1e6 / max(served, 1)
    return {
        "rps": rps,
        "cpu_us": (after["cpu_s"] - before["cpu_s"]) * per,
        "app_us": (after["app_ns"] - before["app_ns"]) / 1000 / max(served, 1),
        "work_us": (after["work_ns"] - before["work_ns"]) / 1000 / max(calls, 1),
        "again_us": (after["again_ns"] - before["again_ns"]) / 1000 / max(calls, 1),
        **{
            f"gc{g}": (after["gc_count"][g] - before["gc_count"][g]) * 1000 / max(served, 1)
            for g in range(3)
        },
        "gc_us": sum(after["gc_ns"][g] - before["gc_ns"][g] for g in range(3)) / 1000 * per / 1e6,
        "tracked": after["tracked"],
        **steps(before, after),
        "loop_us": (after["main_ns"] - before["main_ns"]) / 1000 / max(served, 1),
        "other_us": (after["other_ns"] - before["other_ns"]) / 1000 / max(served, 1),
        "wait_us": (after["wait_ns"] - before["wait_ns"]) / 1000 / max(served, 1),
        "faults": (after["minflt"] - before["minflt"]) / max(served, 1),
        "csw": (after["csw"] - before["csw"]) * 1000 / max(served, 1),
    }


def print_steps(label: str, served: list[dict[str, float]], alone: list[dict[str, float]]) -> None:
    """The middleware's steps: µs per call in one event loop alone, and inside uvicorn."""

    def median(rows: list[dict[str, float]], field: str) -> float:
        return statistics.median(row.get(field, 0.0) for row in rows)

    def own(rows: list[dict[str, float]]) -> float:
        # the event is emitted inside the app's send: it is part of "the app below"
        return (
            median(rows, "step JWTAuditMiddleware.__call__ (with the app)")
            - median(rows, "step app below the middleware")
            + median(rows, "step Exchange.finish (the event)")
        )

    print(f"\n{label}: the middleware's steps, µs per call (medians; timers add ~0.1 each)")
    print(f"  {'step':<48}{'in-process':>11}{'in uvicorn':>11}{'ratio':>7}")
    fields = [field for field in served[0] if field.startswith("step ")]
    rows = [(field[5:], median(alone, field), median(served, field)) for field in fields]
    rows.append(("the middleware's own (call - app + event)", own(alone), own(served)))
    for name, here, there in rows:
        print(f"  {name:<48}{here:>11.2f}{there:>11.2f}{there / max(here, 1e-9):>7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--loop", default="auto")
    parser.add_argument("--http", default="auto")
    parser.add_argument("--variants", default=";".join(DEFAULT_VARIANTS), help="';'-separated")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from jwt_audit_middleware.testing import SigningKey

    key = SigningKey.generate("RS256", kid="bench")
    token = key.token(expires_in=3600, scope="read")
    variants = [parse_variant(spec) for spec in args.variants.split(";") if spec]
    workdir = Path(tempfile.mkdtemp(prefix="jwt-audit-share-"))
    base_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH", ""), str(ROOT)) if p
        ),
        "BENCH_PUBLIC_KEY": key.public_pem or "",
        "BENCH_EVENTS": str(workdir / "events.jsonl"),
    }
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in variants}
    local: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in variants}
    try:
        for _ in range(args.rounds):
            for label, app, env in variants:
                results[label].append(measure(app, {**base_env, **env}, args, token))
                if env.get("SHARE_TIMING"):
                    local[label].append(in_process(app, {**base_env, **env}, 20_000, token))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    import uvicorn

    def median(label: str, field: str) -> float:
        return statistics.median(r[field] for r in results[label])

    reference = variants[0][0]
    bare_rps, bare_cpu = median(reference, "rps"), median(reference, "cpu_us")
    print(
        f"\nuvicorn {uvicorn.__version__} (--loop {args.loop} --http {args.http}), 1 worker, "
        f"wrk -t1 -c{args.connections} -d{args.seconds:g}s, {args.rounds} rounds interleaved "
        f"(medians), Python {sys.version.split()[0]}; against {reference!r}"
    )
    header = (
        f"{'variant':<34}{'req/s':>8}{'of bare':>8}{'µs added':>9}{'cpu µs':>8}{'added':>7}"
        f"{'loop':>6}{'other':>6}{'wait':>6}{'in-app µs':>10}{'work µs':>8}{'again':>6}{'gc/1k g0/g1/g2':>17}{'gc µs':>7}{'faults':>7}{'csw/1k':>7}"
    )
    print(header)
    print("-" * len(header))
    for label, _, _ in variants:
        rps, cpu = median(label, "rps"), median(label, "cpu_us")
        collections = "/".join(f"{median(label, f'gc{g}'):.1f}" for g in range(3))
        print(
            f"{label:<34}{rps:>8,.0f}{rps / bare_rps:>8.0%}{1e6 / rps - 1e6 / bare_rps:>9.1f}"
            f"{cpu:>8.1f}{cpu - bare_cpu:>7.1f}{median(label, 'loop_us'):>6.1f}"
            f"{median(label, 'other_us'):>6.1f}{median(label, 'wait_us'):>6.1f}"
            f"{median(label, 'app_us'):>10.1f}"
            f"{median(label, 'work_us'):>8.2f}{median(label, 'again_us'):>6.2f}"
            f"{collections:>17}{median(label, 'gc_us'):>7.1f}"
            f"{median(label, 'faults'):>7.2f}{median(label, 'csw'):>7.0f}"
        )
    for label in (label for label, _, env in variants if env.get("SHARE_TIMING")):
        print_steps(label, results[label], local[label])
    return 0


if __name__ == "__main__":
    sys.exit(main())
