"""Prometheus multiprocess mode under real gunicorn workers (README "Metrics and traces").

Two sync workers, ``PROMETHEUS_MULTIPROC_DIR`` set, ``metrics=True`` in the
app and ``/metrics`` served by ``make_wsgi_app`` over a fresh registry with
``MultiProcessCollector`` (exempt from authentication by
``DispatcherMiddleware``), ``child_exit`` marking dead workers in
``gunicorn.conf.py``: a known mix of requests spread over both workers, and the
scrape, whichever worker answers it, sums them.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest
from processes import free_port, start_server, stop_process

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs fork()"),
]

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).parent / "gunicorn"
START_TIMEOUT = 20.0

APP = """
import os
import time

from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from jwt_audit_middleware import JWTAuditWSGIMiddleware
from jwt_audit_middleware.metrics import instrument


def hello(environ, start_response):
    time.sleep(0.01)  # keeps a worker busy a moment: concurrent requests spread
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Worker", str(os.getpid()))])
    return [b"ok"]


protected = JWTAuditWSGIMiddleware(
    hello, algorithms=["HS256"], secret=os.environ["TEST_SECRET"], metrics=True
)
# what Lifecycle does itself once wired (idempotent)
instrument(True, protected._lifecycle.audit, protected._lifecycle.gate)

registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
application = DispatcherMiddleware(protected, {"/metrics": make_wsgi_app(registry)})
"""

CONFIG = """
from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""


@pytest.fixture
def secret() -> str:
    return secrets.token_hex(32)  # text: it goes to the workers through the environment


@pytest.fixture
def gunicorn(tmp_path: Path, secret: str) -> Iterator[tuple[str, Path]]:
    """``gunicorn -w 2`` in multiprocess mode; its base URL and the metrics directory."""
    (tmp_path / "metrics_app.py").write_text(APP, encoding="utf-8")
    (tmp_path / "gunicorn.conf.py").write_text(CONFIG, encoding="utf-8")
    directory = tmp_path / "prometheus"
    directory.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWT_AUDIT_")}
    env.update(
        TEST_SECRET=secret,
        PROMETHEUS_MULTIPROC_DIR=str(directory),
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]),
    )
    output = tmp_path / "gunicorn.out"
    argv = [
        str(GUNICORN), "metrics_app:application", "--workers", "2",
        "--config", str(tmp_path / "gunicorn.conf.py"),
        "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "--graceful-timeout", "2",
        "--log-level", "warning",
    ]  # fmt: skip
    process = start_server(argv, output, env=env)
    try:
        yield f"http://127.0.0.1:{port}", directory
    finally:
        stop_process(process, timeout=5)
        if process.returncode not in (0, -signal.SIGTERM):
            print(output.read_text(errors="replace")[-3000:])


def wait_ready(base_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            httpx.get(base_url + "/metrics", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("gunicorn did not start")


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match and match[1] == name and ",".join(sorted(match[2].split(","))) == wanted:
            return float(match[3])
    return 0.0


def test_the_scrape_sums_every_worker(gunicorn: tuple[str, Path], secret: str) -> None:
    base_url, directory = gunicorn
    wait_ready(base_url)
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, secret)
    plan = [f"Bearer {token}"] * 60 + [None] * 30 + ["Bearer not-a-token"] * 10

    def one(authorization: str | None) -> tuple[int, str]:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = httpx.get(base_url + "/orders", headers=headers, timeout=5)
        return response.status_code, response.headers.get("x-worker", "")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, plan))
    assert sorted({status for status, _ in answers}) == [200, 401]
    workers = {worker for status, worker in answers if status == 200}
    assert len(workers) == 2, "the requests did not spread over both workers"
    assert len(list(directory.glob("counter_*.db"))) >= 2  # each worker wrote its own file
    for _ in range(3):  # whichever worker answers the scrape, the sum is the same
        text = httpx.get(base_url + "/metrics", timeout=5).text
        assert sample(text, "jwt_audit_requests_total", outcome="allowed", reason="") == 60
        assert (
            sample(text, "jwt_audit_requests_total", outcome="denied", reason="missing_token") == 30
        )
        assert (
            sample(text, "jwt_audit_requests_total", outcome="denied", reason="malformed_token")
            == 10
        )
        hits = sample(text, "jwt_audit_verify_seconds_count", cache="hit")
        misses = sample(text, "jwt_audit_verify_seconds_count", cache="miss")
        assert hits + misses == 70  # every presented token: one look-up hit or one verification
        assert 2 <= misses <= 12  # the first sight of the token in each worker, and the 10 bad
