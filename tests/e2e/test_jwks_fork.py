"""A key the identity provider retires is refused by every ``gunicorn --preload`` worker.

With ``--preload`` the middleware, its ``jwks_url`` key set and that set's
refresh thread are built in the master; the workers are forked from it.  The
JWKS server runs in this test, on 127.0.0.1; gunicorn is a subprocess in its
own session, stopped by its pid.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from jwks_server import JWKSServer
from processes import free_port, start_server, stop_process

from jwt_audit_middleware.testing import SigningKey, jwks_document

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs fork()"),
]

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).parent / "gunicorn"
WORKERS = 2
CACHE_SECONDS = 1.0
START_TIMEOUT = 20.0

# The app gunicorn imports.  The outer layer names the worker in every answer (denials
# included) and keeps it busy a moment, so concurrent requests spread over the workers.
APP = f"""
import os
import time

from jwt_audit_middleware import JWTAuditWSGIMiddleware


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


protected = JWTAuditWSGIMiddleware(
    hello,
    algorithms=["RS256"],
    jwks_url=os.environ["TEST_JWKS_URL"],
    jwks_timeout=1.0,
    jwks_cache_seconds={CACHE_SECONDS},
    jwks_min_refresh_seconds=60,  # no refetch for a kid: only the background refresh counts
)


def application(environ, start_response):
    time.sleep(0.02)

    def start(status, headers, exc_info=None):
        return start_response(status, [*headers, ("X-Worker", str(os.getpid()))], exc_info)

    return protected(environ, start)
"""


@pytest.fixture
def retiring() -> SigningKey:
    """The key the identity provider publishes first, then retires."""
    return SigningKey.generate("RS256", kid="retiring")


@pytest.fixture
def successor() -> SigningKey:
    return SigningKey.generate("RS256", kid="successor")


@pytest.fixture
def idp(retiring: SigningKey, successor: SigningKey) -> Iterator[JWKSServer]:
    server = JWKSServer(jwks_document(retiring, successor))
    yield server
    server.close()


@pytest.fixture
def gunicorn(tmp_path: Path, idp: JWKSServer) -> Iterator[str]:
    """``gunicorn --preload -w 2`` serving APP; its base URL."""
    (tmp_path / "forked_app.py").write_text(APP, encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWT_AUDIT_")}
    env.update(TEST_JWKS_URL=idp.url, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    output = tmp_path / "gunicorn.out"
    argv = [
        str(GUNICORN), "forked_app:application", "--preload", "--workers", str(WORKERS),
        "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "--graceful-timeout", "2",
        "--log-level", "warning",
    ]  # fmt: skip
    process = start_server(argv, output, env=env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, timeout=5)
        if process.returncode not in (0, -signal.SIGTERM):
            print(output.read_text(errors="replace")[-3000:])


def ask(base_url: str, token: str, count: int) -> list[tuple[int, str]]:
    """``count`` concurrent requests with ``token``: (status, worker pid) of each."""

    def one(_: int) -> tuple[int, str]:
        response = httpx.get(
            base_url + "/r", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        return response.status_code, response.headers.get("x-worker", "?")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def wait_ready(base_url: str, token: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if ask(base_url, token, 1)[0][0] == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("gunicorn did not start")


def test_a_retired_key_is_refused_by_every_preloaded_worker(
    gunicorn: str, idp: JWKSServer, retiring: SigningKey, successor: SigningKey
) -> None:
    old, new = retiring.token(), successor.token()
    wait_ready(gunicorn, old)
    before = ask(gunicorn, old, 40)
    assert {status for status, _ in before} == {200}
    assert len({worker for _, worker in before}) == WORKERS  # both workers hold the key

    idp.set("ok", jwks_document(successor))  # "retiring" is compromised: withdrawn
    time.sleep(CACHE_SECONDS + 1.0)  # past jwks_cache_seconds, with room for the fetch

    after = ask(gunicorn, old, 40)
    workers = {worker for _, worker in after}
    assert len(workers) == WORKERS, "the requests did not reach every worker"
    accepted = sorted({worker for status, worker in after if status != 401})
    assert not accepted, f"workers {accepted} still accept the retired key"
    assert {status for status, _ in ask(gunicorn, new, 10)} == {200}
