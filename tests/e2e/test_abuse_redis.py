"""Two server processes sharing one Redis (issue 15, contract §9): abuse detection across processes.

Process A is uvicorn serving Starlette (``JWTAuditMiddleware``), process B
gunicorn serving Flask (the ``JWTAudit`` extension, one gthread worker); both
read their settings from ``JWT_AUDIT_*`` variables (``state_url`` naming a
redis-server of this module's own on a free port, ``trusted_proxies`` set to
127.0.0.1 so that ``X-Forwarded-For`` chooses the client IP) and write their
events to a JSON-lines file each.

- A lockout triggered through A is enforced by B (429 ``locked_out``, ``Retry-After``).
- A revocation made with the real ``jwt-audit revoke`` is seen by both on the
  very next request, cached tokens included; a lockout ended with
  ``jwt-audit lockouts --clear`` ends in both within a second.
- Redis stopped under load: no request fails or hangs, detection goes on in
  each process's memory, and each file says ``store_lost`` once and, once
  Redis is started again, ``store_restored`` once.  A store also lost while
  Redis was up (deadlines missed on a busy machine) ends the test as an xfail
  naming those events, once everything else has been checked.

The apps are built by ``starlette_app()`` and ``flask_app()`` below, in the
server processes.  Without a redis-server binary the module skips, except
under ``CI=true``, where it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from processes import free_port, start_server, stop_process, wait_serving

from jwt_audit_middleware.testing import SigningKey

if TYPE_CHECKING:
    from flask import Flask
    from starlette.applications import Starlette

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs fork()"),
]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODULE = Path(__file__).stem  # the servers import this module for the apps below
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() == "true"
START_TIMEOUT = 30.0
AUDIENCE = "orders"
DENIALS_PER_IP = 5
LOCKOUT_SECONDS = 30
KEY = SigningKey.generate("RS256", kid="abuse-1")  # made for this run
FORGER = SigningKey.generate("RS256", kid="abuse-1")  # same kid, other key: bad_signature


# -- the apps, built in the server processes -------------------------------------------


def _attach_sink() -> None:
    """Every event of this process, as JSON lines, to ``ABUSE_AUDIT_LOG``."""
    import logging

    from jwt_audit_middleware.sinks import JSONLinesHandler

    logger = logging.getLogger("jwt_audit")
    logger.addHandler(JSONLinesHandler(os.environ["ABUSE_AUDIT_LOG"], flush_interval=0.05))
    logger.setLevel(logging.INFO)
    logger.propagate = False


def starlette_app() -> Starlette:
    """Process A: Starlette in ``JWTAuditMiddleware``, settings from ``JWT_AUDIT_*``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from jwt_audit_middleware import JWTAuditMiddleware, Settings, get_claims

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"sub": (get_claims(request) or {}).get("sub")})

    _attach_sink()
    return Starlette(
        routes=[Route("/orders", echo), Route("/health", echo)],
        middleware=[Middleware(JWTAuditMiddleware, settings=Settings.from_env())],
    )


def flask_app() -> Flask:
    """Process B: Flask with the ``JWTAudit`` extension, settings from ``JWT_AUDIT_*``."""
    from flask import Flask

    from jwt_audit_middleware import Settings
    from jwt_audit_middleware.contrib.flask import JWTAudit, current_claims

    _attach_sink()
    app = Flask(__name__)
    app.add_url_rule("/orders", "orders", lambda: {"sub": current_claims.get("sub")})
    app.add_url_rule("/health", "health", lambda: {"sub": None})
    JWTAudit(app, settings=Settings.from_env())
    return app


# -- Redis and the servers ---------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this module's own on a free port: stopped and started at will."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.directory),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            assert self.process.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def answers(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            client.flushall()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    pytest.importorskip("redis")
    binary = os.environ.get("JWTAUDIT_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        if IN_CI:
            pytest.fail("no redis-server binary; CI must run .ci/services.sh first")
        pytest.skip("no redis-server binary (run .ci/services.sh)")
    server = PrivateRedis(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Server:
    """One app process on 127.0.0.1 and the JSON-lines file of its events."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    output: Path
    settled: int = 0  # state events written before the tests (see ``warm_up``)

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        # audit events only: the logger jwt_audit.state's own warnings go to the file too
        return [record for record in records if "event" in record]

    def state_events(self) -> list[str]:
        return [e["outcome"] for e in self.events() if e["event"] == "state_event"]

    def alerts(self, client_ip: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == "alert" and e["client_ip"] == client_ip]

    def count(self, reason: str) -> int:
        return sum(e.get("reason") == reason for e in self.events())

    def since_settled(self) -> list[str]:
        """The state events written since the tests began (after ``warm_up``)."""
        return self.state_events()[self.settled :]

    def wait_for(self, what: str, found: Callable[[Server], bool], timeout: float = 10.0) -> None:
        """Until ``found(self)`` (the sink writes every 50 ms), or fail with what was written."""
        deadline = time.monotonic() + timeout
        while not found(self):
            if time.monotonic() > deadline:
                tail = self.output.read_text(errors="replace")[-2000:]
                raise AssertionError(f"{self.name}: no {what} in {self.events()[-5:]}\n{tail}")
            time.sleep(0.05)


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


def restored_since(moment: float, server: Server) -> bool:
    return any(
        e["event"] == "state_event" and e["outcome"] == "store_restored" and event_time(e) > moment
        for e in server.events()
    )


def alerted(client_ip: str, server: Server) -> bool:
    return bool(server.alerts(client_ip))


def serve_app(name: str, kind: str, tmp: Path, redis_url: str) -> Server:
    port = free_port()
    if kind == "uvicorn":
        argv = [
            str(BIN / "uvicorn"), f"{MODULE}:starlette_app", "--factory",
            "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip
    else:
        argv = [
            str(BIN / "gunicorn"), f"{MODULE}:flask_app()",
            "--chdir", str(HERE), "--workers", "1", "--worker-class", "gthread",
            "--threads", "8", "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "5",
            "--log-level", "warning",
        ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWT_AUDIT_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]),
        ABUSE_AUDIT_LOG=str(tmp / f"{name}.jsonl"),
        JWT_AUDIT_ALGORITHMS="RS256",
        JWT_AUDIT_PUBLIC_KEY=KEY.public_pem or "",
        JWT_AUDIT_AUDIENCE=AUDIENCE,
        JWT_AUDIT_EXEMPT_PATHS="/health",
        JWT_AUDIT_TRUSTED_PROXIES="127.0.0.1/32",
        JWT_AUDIT_STATE_URL=redis_url,
        JWT_AUDIT_ABUSE_DETECTION=json.dumps(
            {"denials_per_ip": DENIALS_PER_IP, "lockout_seconds": LOCKOUT_SECONDS}
        ),
    )
    output = tmp / f"{name}.out"
    process = start_server(argv, output, env=env, cwd=ROOT)
    server = Server(name, process, f"http://127.0.0.1:{port}", tmp / f"{name}.jsonl", output)
    try:
        wait_serving(name, server.url + "/health", process, output, START_TIMEOUT)
    except BaseException:
        stop_process(process)
        raise
    return server


@pytest.fixture(scope="module")
def servers(
    redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("abuse-servers")
    a = serve_app("A-uvicorn", "uvicorn", tmp, redis_server.url)
    try:
        b = serve_app("B-gunicorn", "gunicorn", tmp, redis_server.url)
    except BaseException:
        stop_process(a.process)
        raise
    try:
        for server in (a, b):
            warm_up(server)
        yield a, b
    finally:
        for server in (a, b):
            stop_process(server.process)


def warm_up(server: Server) -> None:
    """A few requests, so the server has connected to Redis before the tests begin.

    A first probe (connecting, redis-py's handshake, loading the script) can miss
    the store's deadline of a few milliseconds on a busy machine: the store is
    then lost and back a second later.  Wait for that, so that the tests see
    only what they cause.
    """
    for _ in range(3):
        assert get(server, valid("warm-up"), "192.0.2.1").status_code == 200
    time.sleep(0.2)  # the sink's next batch
    if server.state_events():
        server.wait_for("store_restored", lambda s: s.state_events()[-1] == "store_restored")
    server.settled = len(server.state_events())


@pytest.fixture
def pair(redis_server: PrivateRedis, servers: tuple[Server, Server]) -> tuple[Server, Server]:
    """The two servers, with Redis emptied of the previous test's counters and locks."""
    redis_server.flush()
    return servers


def get(
    server: Server, token: str | None = None, ip: str = "192.0.2.10", timeout: float = 5.0
) -> httpx.Response:
    headers = {"X-Forwarded-For": ip}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(server.url + "/orders", headers=headers, timeout=timeout)


def valid(sub: str = "alice", **claims: Any) -> str:
    return KEY.token(sub=sub, aud=AUDIENCE, **claims)


def forged(sub: str = "mallory") -> str:
    return FORGER.token(sub=sub, aud=AUDIENCE)


# -- (a) a lockout is shared ---------------------------------------------------------------


def test_a_lockout_triggered_through_one_process_is_enforced_by_the_other(
    pair: tuple[Server, Server], redis_server: PrivateRedis
) -> None:
    a, b = pair
    attacker = "198.51.100.23"
    for _ in range(DENIALS_PER_IP):  # forged tokens through A: the N-th locks the address
        assert get(a, forged(), attacker).status_code == 401
    locked = get(b, valid(), attacker)  # B has never seen this client: Redis has
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"] == "locked_out"
    assert 1 <= int(locked.headers["Retry-After"]) <= LOCKOUT_SECONDS
    assert get(b, valid(), "192.0.2.99").status_code == 200  # other clients go on
    assert get(a, valid(), attacker).status_code == 429  # and A locks it too, of course
    listed = jwt_audit("lockouts", "--json", "--state-url", redis_server.url)
    assert listed.returncode == 0, listed.stderr
    (lock,) = json.loads(listed.stdout)
    assert lock["key"] == f"ip:{attacker}"
    assert 0 < lock["seconds_left"] <= LOCKOUT_SECONDS

    a.wait_for("alert", lambda s: bool(s.alerts(attacker)))
    (alert,) = a.alerts(attacker)
    assert (alert["outcome"], alert["reason"], alert["count"]) == (
        "detected",
        "denial_burst_ip",
        DENIALS_PER_IP,
    )
    assert f"locked out for {LOCKOUT_SECONDS} s" in alert["detail"]

    def b_denied() -> list[dict[str, Any]]:
        return [e for e in b.events() if e.get("reason") == "locked_out"]

    b.wait_for("locked_out denial", lambda _: bool(b_denied()))
    (denial,) = b_denied()
    assert (denial["event"], denial["status"], denial["client_ip"]) == ("denial", 429, attacker)
    assert b.alerts(attacker) == []  # the alert is A's: one per key and window, in all


# -- (b) a revocation made with the command line ----------------------------------------


def jwt_audit(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWT_AUDIT_")}
    return subprocess.run(
        [str(BIN / "jwt-audit"), *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def test_a_revocation_made_with_the_cli_is_seen_by_both_on_the_next_request(
    pair: tuple[Server, Server], redis_server: PrivateRedis
) -> None:
    a, b = pair
    jti = f"jti-{uuid.uuid4().hex}"
    token = valid("frank", jti=jti)
    older = valid("grace", iat=int(time.time()) - 60)
    for server in (a, b):  # both verified them: cache hits from now on
        assert get(server, token).json() == {"sub": "frank"}
        assert get(server, older).json() == {"sub": "grace"}

    done = jwt_audit("revoke", "--jti", jti, "--state-url", redis_server.url)
    assert done.returncode == 0, done.stderr
    done = jwt_audit("revoke", "--subject", "grace", "--state-url", redis_server.url)
    assert done.returncode == 0, done.stderr

    for server in (a, b):  # the very next request
        refused = get(server, token)
        assert refused.status_code == 401, (server.name, refused.text)
        assert refused.json()["error"] == "invalid_token"
        assert get(server, older).status_code == 401
    time.sleep(max(0.0, int(time.time()) + 1 - time.time()))  # iat is in whole seconds
    newer = valid("grace")  # issued after the subject's revocation
    assert get(a, newer).status_code == 200
    assert get(b, newer).status_code == 200

    listed = jwt_audit("revocations", "--state-url", redis_server.url)
    assert listed.returncode == 0, listed.stderr
    assert jti in listed.stdout
    assert "grace" in listed.stdout
    for server in (a, b):
        server.wait_for("revoked denials", lambda s: s.count("revoked") == 2)


def test_a_lockout_cleared_with_the_cli_ends_in_both_processes_within_a_second(
    pair: tuple[Server, Server], redis_server: PrivateRedis
) -> None:
    a, b = pair
    attacker = "198.51.100.44"
    for _ in range(DENIALS_PER_IP):
        get(a, forged(), attacker)
    for server in (a, b):  # each has answered it 429: each keeps it for a second
        assert get(server, valid(), attacker).status_code == 429
    cleared = jwt_audit("lockouts", "--clear", f"ip:{attacker}", "--state-url", redis_server.url)
    assert cleared.returncode == 0, cleared.stderr
    cleared_at = time.monotonic()
    for server in (a, b):
        while (status := get(server, valid(), attacker).status_code) == 429:
            assert time.monotonic() - cleared_at < 2.0, f"{server.name} still locks it out"
            time.sleep(0.05)
        assert status == 200, server.name
    listed = jwt_audit("lockouts", "--state-url", redis_server.url)
    assert listed.stdout == "no lockouts in force\n"


# -- (c) Redis stopped under load ----------------------------------------------------------


@dataclass
class Load:
    """Requests to both servers from a thread until stopped: statuses, failures, latency."""

    servers: tuple[Server, Server]
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=asyncio.run, args=(self.run(),), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        assert self.thread is not None
        self.thread.join(30)
        assert not self.thread.is_alive(), "the load did not stop"

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(timeout=5.0, limits=limits) as client:
            await asyncio.gather(*(self.worker(client, n) for n in range(4)))

    async def worker(self, client: httpx.AsyncClient, n: int) -> None:
        server = self.servers[n % 2]
        good, bad = valid(f"user-{n}"), forged()
        sent = 0
        while not self.stopping.is_set():
            # mostly one valid token from one address; now and then a forged one from
            # an address of its own (below any threshold: the load locks nobody out)
            token, ip = (
                (bad, f"10.{n}.{sent // 256 % 256}.{sent % 256}")
                if sent % 10 == 9
                else (good, f"192.0.2.{100 + n}")
            )
            headers = {"X-Forwarded-For": ip}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            start = time.perf_counter()
            try:
                response = await client.get(server.url + "/orders", headers=headers)
            except httpx.HTTPError as exc:
                self.failures.append(f"{server.name}: {type(exc).__name__}: {exc}")
            else:
                self.statuses[response.status_code] += 1
            self.slowest = max(self.slowest, time.perf_counter() - start)
            sent += 1


def test_redis_stopped_under_load_fails_no_request_and_detection_goes_on_in_memory(
    pair: tuple[Server, Server], redis_server: PrivateRedis
) -> None:
    a, b = pair
    load = Load(pair)
    load.start()
    try:
        time.sleep(0.5)
        assert redis_server.process is not None
        killed = time.time()
        redis_server.process.send_signal(signal.SIGKILL)  # gone at once, as a crash
        redis_server.process.wait(10)
        redis_server.process = None
        for server in (a, b):
            server.wait_for("store_lost", lambda s: "store_lost" in s.since_settled())

        # each process goes on detecting, in its own memory
        for server, attacker in ((a, "198.51.100.61"), (b, "198.51.100.62")):
            for _ in range(DENIALS_PER_IP):
                assert get(server, forged(), attacker).status_code == 401
            assert get(server, valid(), attacker).status_code == 429
            server.wait_for("alert", partial(alerted, attacker))
        assert get(b, valid(), "198.51.100.61").status_code == 200  # A's memory is A's
        time.sleep(0.5)

        restarted = time.time()
        redis_server.start()
        for server in (a, b):
            server.wait_for("store_restored", partial(restored_since, restarted))
        time.sleep(0.5)  # load on a Redis that is back
    finally:
        load.stop()

    assert load.failures == [], load.failures[:5]
    assert set(load.statuses) <= {200, 401}, load.statuses
    assert load.statuses[200] > 100, load.statuses
    assert load.slowest < 2.0, f"slowest request {load.slowest:.2f} s"
    time.sleep(0.2)  # the sinks' last batch
    relapses: dict[str, list[tuple[str, str | None]]] = {}
    for server in (a, b):
        state = [e for e in server.events() if e["event"] == "state_event"][server.settled :]
        for event in state:
            assert f"127.0.0.1:{redis_server.port}" in event["detail"]
        outcomes = [(e["outcome"], e["reason"]) for e in state]
        before = sum(event_time(e) < killed for e in state)  # deadlines missed, Redis up
        if before:
            relapses[f"{server.name} before the outage"] = outcomes[:before]
        lost_at_kill = before > 0 and outcomes[before - 1][0] == "store_lost"
        expected = [("store_lost", "connection_error"), ("store_restored", None)]
        expected = expected[1:] if lost_at_kill else expected
        assert outcomes[before : before + len(expected)] == expected, outcomes
        after = outcomes[before + len(expected) :]
        if after:  # lost again with Redis up: only the known deadline misses
            assert set(after) <= {("store_lost", "timeout"), ("store_restored", None)}, after
            relapses[f"{server.name} after the outage"] = after
        assert set(outcomes[:before]) <= {("store_lost", "timeout"), ("store_restored", None)}
        warm_up(server)  # back on Redis before the next check

    # shared again: a lockout through B is enforced by A
    attacker = "198.51.100.63"
    for _ in range(DENIALS_PER_IP):
        assert get(b, forged(), attacker).status_code == 401
    assert get(a, valid(), attacker).status_code == 429
    if relapses:
        pytest.xfail(
            f"the store was lost while Redis was up: {relapses}. A probe missed the store's"
            " 10 ms deadline under load or on a fresh connection (connect, handshake, the"
            " script loaded again; state_redis.py, issue 15 review). Everything else held."
        )
