"""Prometheus metrics (contract §11) against a real ``prometheus_client`` registry.

A known mix of requests goes through the real middlewares (allowed, every
denial class a request can reach, cache hits, a report-only would-deny, a
JWKS refetch that works and one that fails, a sink that writes and one that
spills) and the registry's samples must say exactly that.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jwks_server import JWKSServer
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from jwt_audit_middleware import (
    AuditLogger,
    ConfigurationError,
    JWTAuditMiddleware,
    JWTAuditWSGIMiddleware,
    Settings,
)
from jwt_audit_middleware.cache import ObservedTokenCache, TokenCache
from jwt_audit_middleware.metrics import Metrics, instrument, metrics_for
from jwt_audit_middleware.sinks import JSONLinesHandler
from jwt_audit_middleware.sinks._worker import BackgroundHandler
from jwt_audit_middleware.testing import SigningKey, asgi_request, jwks_document

ROOT = Path(__file__).resolve().parents[1]


def wired(middleware: Any) -> Any:
    """The middleware, its metrics hooked up as ``Lifecycle`` does when built with ``metrics=``.

    ``instrument()`` is idempotent: once the lifecycle calls it itself, this
    is a no-op.
    """
    lifecycle = middleware._lifecycle
    instrument(lifecycle.settings.metrics, lifecycle.audit, lifecycle.gate)
    return middleware


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def requests_by_label(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """The non-zero ``jwt_audit_requests_total`` series."""
    return {
        (sample.labels["outcome"], sample.labels["reason"]): sample.value
        for metric in registry.collect()
        if metric.name == "jwt_audit_requests"
        for sample in metric.samples
        if sample.name == "jwt_audit_requests_total" and sample.value
    }


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def ok_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


async def status(app: Any, path: str = "/r", authorization: str | None = None) -> int:
    headers = {} if authorization is None else {"authorization": authorization}
    response = await asgi_request(app, path, headers=headers)
    assert response.status is not None
    return response.status


def wsgi_status(app: Any, path: str = "/r", authorization: str | None = None) -> str:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    seen: list[str] = []
    body = app(environ, lambda s, h, e=None: seen.append(s))
    b"".join(body)
    getattr(body, "close", lambda: None)()
    return seen[0]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


# -- requests and verification time ---------------------------------------------------


def test_a_known_mix_of_requests(
    registry: CollectorRegistry,
    rsa_key: SigningKey,
    other_rsa_key: SigningKey,
) -> None:
    middleware = wired(
        JWTAuditMiddleware(
            ok_app,
            **rsa_key.options(metrics=registry, path_scopes={"/admin": ["admin"]}),
            exempt_paths=["/health"],
        )
    )
    good = rsa_key.token()
    calls = [
        (None, "/r", 401),  # missing_token
        ("Basic dXNlcjpwYXNz", "/r", 401),  # unsupported_scheme
        ("Bearer a b", "/r", 400),  # invalid_request
        ("Bearer not-a-token", "/r", 401),  # malformed_token
        (f"Bearer {other_rsa_key.token()}", "/r", 401),  # bad_signature
        (f"Bearer {rsa_key.token(expires_in=-600)}", "/r", 401),  # expired
        (f"Bearer {good}", "/r", 200),  # first seen: verified
        (f"Bearer {good}", "/r", 200),  # cache hit
        (f"Bearer {good}", "/r", 200),  # cache hit
        (f"Bearer {good}", "/admin", 403),  # cache hit, insufficient_scope
        (None, "/health", 200),  # exempt: allowed, not a verification
    ]

    async def run() -> list[int]:
        return [await status(middleware, path, auth) for auth, path, _ in calls]

    assert asyncio.run(run()) == [expected for _, _, expected in calls]
    assert requests_by_label(registry) == {
        ("allowed", ""): 4.0,
        ("denied", "missing_token"): 1.0,
        ("denied", "unsupported_scheme"): 1.0,
        ("denied", "invalid_request"): 1.0,
        ("denied", "malformed_token"): 1.0,
        ("denied", "bad_signature"): 1.0,
        ("denied", "expired"): 1.0,
        ("denied", "insufficient_scope"): 1.0,
    }
    cache = middleware._lifecycle.gate.cache
    assert isinstance(cache, ObservedTokenCache)
    hits = value(registry, "jwt_audit_verify_seconds_count", cache="hit")
    assert hits == cache.hits == 3
    # verified: malformed, bad signature, expired (denied after parsing) and the good token
    assert value(registry, "jwt_audit_verify_seconds_count", cache="miss") == 4
    assert 0 < value(registry, "jwt_audit_verify_seconds_sum", cache="hit") < 0.1
    # a hit lands in the lowest buckets; the exposition is what Prometheus scrapes
    text = generate_latest(registry).decode()
    assert 'jwt_audit_requests_total{outcome="allowed",reason=""} 4.0' in text
    assert 'jwt_audit_verify_seconds_bucket{cache="hit",le="0.0025"} 3.0' in text


def test_report_only_counts_would_deny(registry: CollectorRegistry, rsa_key: SigningKey) -> None:
    middleware = wired(
        JWTAuditMiddleware(ok_app, **rsa_key.options(metrics=registry, mode="report-only"))
    )
    assert asyncio.run(status(middleware)) == 200
    assert requests_by_label(registry) == {("would_deny", "missing_token"): 1.0}


def test_wsgi_counts_the_same(registry: CollectorRegistry, rsa_key: SigningKey) -> None:
    middleware = wired(JWTAuditWSGIMiddleware(ok_wsgi, **rsa_key.options(metrics=registry)))
    token = rsa_key.token()
    assert wsgi_status(middleware, authorization=f"Bearer {token}").startswith("200")
    assert wsgi_status(middleware, authorization=f"Bearer {token}").startswith("200")
    assert wsgi_status(middleware).startswith("401")
    assert requests_by_label(registry) == {("allowed", ""): 2, ("denied", "missing_token"): 1}
    assert value(registry, "jwt_audit_verify_seconds_count", cache="hit") == 1
    assert value(registry, "jwt_audit_verify_seconds_count", cache="miss") == 1


def test_without_a_cache_every_verification_is_a_miss(
    registry: CollectorRegistry, rsa_key: SigningKey
) -> None:
    middleware = wired(
        JWTAuditMiddleware(ok_app, **rsa_key.options(metrics=registry, cache_size=0))
    )
    token = rsa_key.token()

    async def run() -> None:
        for _ in range(3):
            assert await status(middleware, authorization=f"Bearer {token}") == 200

    asyncio.run(run())
    assert value(registry, "jwt_audit_verify_seconds_count", cache="miss") == 3
    assert value(registry, "jwt_audit_verify_seconds_count", cache="hit") == 0


def test_hits_are_told_apart_per_thread(registry: CollectorRegistry, rsa_key: SigningKey) -> None:
    """Threads hitting the cache while another verifies do not turn its miss into a hit."""
    middleware = wired(JWTAuditWSGIMiddleware(ok_wsgi, **rsa_key.options(metrics=registry)))
    cached = rsa_key.token()
    wsgi_status(middleware, authorization=f"Bearer {cached}")
    fresh = [rsa_key.token(sub=f"user{i}") for i in range(40)]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            wsgi_status(middleware, authorization=f"Bearer {cached}")

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for token in fresh:
            wsgi_status(middleware, authorization=f"Bearer {token}")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    cache = middleware._lifecycle.gate.cache
    assert value(registry, "jwt_audit_verify_seconds_count", cache="miss") == 1 + len(fresh)
    assert value(registry, "jwt_audit_verify_seconds_count", cache="hit") == cache.hits


# -- registries ------------------------------------------------------------------------


def test_middlewares_on_one_registry_share_its_series(
    registry: CollectorRegistry, rsa_key: SigningKey
) -> None:
    first = wired(JWTAuditMiddleware(ok_app, **rsa_key.options(metrics=registry)))
    second = wired(JWTAuditWSGIMiddleware(ok_wsgi, **rsa_key.options(metrics=registry)))
    silent = wired(JWTAuditMiddleware(ok_app, **rsa_key.options()))  # did not ask: not counted
    asyncio.run(status(first))
    wsgi_status(second)
    asyncio.run(status(silent))
    assert requests_by_label(registry) == {("denied", "missing_token"): 2.0}
    assert Metrics.for_registry(registry) is metrics_for(registry)
    names = [m.name for m in registry.collect() if m.name.startswith("jwt_audit")]
    assert len(names) == len(set(names)) == 6


def test_wiring_twice_counts_once(registry: CollectorRegistry, rsa_key: SigningKey) -> None:
    middleware = wired(wired(JWTAuditMiddleware(ok_app, **rsa_key.options(metrics=registry))))
    token = rsa_key.token()
    asyncio.run(status(middleware, authorization=f"Bearer {token}"))
    asyncio.run(status(middleware, authorization=f"Bearer {token}"))
    assert requests_by_label(registry) == {("allowed", ""): 2.0}
    assert value(registry, "jwt_audit_verify_seconds_count", cache="hit") == 1


def test_metrics_true_is_the_default_registry(rsa_key: SigningKey) -> None:
    labels = {"outcome": "denied", "reason": "missing_token"}
    before = REGISTRY.get_sample_value("jwt_audit_requests_total", labels) or 0.0
    middleware = wired(JWTAuditMiddleware(ok_app, **rsa_key.options(metrics=True)))
    asyncio.run(status(middleware))
    assert REGISTRY.get_sample_value("jwt_audit_requests_total", labels) == before + 1


def test_metrics_off_counts_nothing_and_keeps_the_plain_cache(rsa_key: SigningKey) -> None:
    middleware = wired(JWTAuditMiddleware(ok_app, **rsa_key.options()))
    gate = middleware._lifecycle.gate
    assert type(gate.cache) is TokenCache
    assert "decide" not in vars(gate)
    assert metrics_for(False) is None


def test_a_registry_that_is_not_one_is_refused(rsa_key: SigningKey) -> None:
    with pytest.raises(ConfigurationError, match="metrics"):
        Settings(**rsa_key.options(metrics="yes"))
    with pytest.raises(TypeError, match="CollectorRegistry"):
        metrics_for("yes")


def test_made_up_reasons_and_disconnects(registry: CollectorRegistry) -> None:
    metrics = Metrics.for_registry(registry)
    metrics.request("denied", "an_app_reason")
    metrics.request("closed", None)  # a websocket's disconnect event: not a request
    metrics.verified(0.001, hit=False)
    assert requests_by_label(registry) == {("denied", "an_app_reason"): 1.0}
    assert value(registry, "jwt_audit_verify_seconds_count", cache="miss") == 1


# -- alerts -------------------------------------------------------------------------------


def test_alert_events_are_counted(registry: CollectorRegistry) -> None:
    audit = AuditLogger()
    audit.publish(Metrics.for_registry(registry))
    for reason in ("denial_burst_ip", "denial_burst_ip", "token_shared", "something_new"):
        audit.emit(audit.build_event("alert", "detected", reason=reason), logging.WARNING)
    audit.emit(audit.build_event("key_event", "key_added"))  # not an alert
    assert value(registry, "jwt_audit_alerts_total", reason="denial_burst_ip") == 2
    assert value(registry, "jwt_audit_alerts_total", reason="token_shared") == 1
    assert value(registry, "jwt_audit_alerts_total", reason="something_new") == 1


def test_abuse_detection_alerts_reach_the_counter(
    registry: CollectorRegistry, rsa_key: SigningKey
) -> None:
    middleware = wired(
        JWTAuditMiddleware(
            ok_app,
            **rsa_key.options(
                metrics=registry,
                abuse_detection={"denials_per_ip": 3, "window_seconds": 60},
            ),
        )
    )

    async def run() -> None:
        for _ in range(5):
            await status(middleware, authorization="Bearer not-a-token")

    asyncio.run(run())
    assert value(registry, "jwt_audit_alerts_total", reason="denial_burst_ip") == 1


# -- JWKS fetches ---------------------------------------------------------------------------


def test_jwks_fetches_and_a_refetch(
    registry: CollectorRegistry,
    server: JWKSServer,
    rsa_key: SigningKey,
    no_leaked_jwks_threads: None,
) -> None:
    new_key = SigningKey.generate("RS256", kid="rs256-rotated")
    middleware = wired(
        JWTAuditMiddleware(
            ok_app,
            algorithms=["RS256"],
            jwks_url=server.url,
            jwks_timeout=0.5,
            jwks_min_refresh_seconds=0.0,
            metrics=registry,
        )
    )
    try:
        keyset = middleware._lifecycle.gate.verifier.remote_key_sets[0]
        assert keyset.wait_first_fetch(5)

        async def run() -> list[int]:
            answers = [await status(middleware, authorization=f"Bearer {rsa_key.token()}")]
            server.set("ok", jwks_document(rsa_key, new_key))  # rotation: one refetch finds it
            answers.append(await status(middleware, authorization=f"Bearer {new_key.token()}"))
            server.set("500")
            stranger = SigningKey.generate("RS256", kid="nobody")
            answers.append(await status(middleware, authorization=f"Bearer {stranger.token()}"))
            return answers

        assert asyncio.run(run()) == [200, 200, 401]
        assert value(registry, "jwt_audit_jwks_fetches_total", result="ok") == 2
        assert value(registry, "jwt_audit_jwks_fetches_total", result="error") == 1
        assert keyset.fetches == 3
        assert keyset.failures == 1
        assert requests_by_label(registry) == {("allowed", ""): 2, ("denied", "unknown_key"): 1}
    finally:
        middleware.close()


# -- sinks -------------------------------------------------------------------------------------


class GatedHandler(BackgroundHandler):
    """A sink whose writes wait for ``open`` (an outage): its queue fills and it spills."""

    def __init__(self, **options: Any) -> None:
        self.open = threading.Event()
        self.written: list[logging.LogRecord] = []
        self.spilled: list[Any] = []
        super().__init__(**options)

    def write_batch(self, prepared: Any) -> None:
        self.open.wait(10)
        self.written.extend(prepared)

    def spill(self, items: list[Any]) -> None:
        self.spilled.extend(items)

    def spill_target(self) -> str:
        return "memory"


def sink_values(registry: CollectorRegistry, sink: str) -> tuple[float, float, float]:
    return (
        value(registry, "jwt_audit_sink_events_total", sink=sink, result="written"),
        value(registry, "jwt_audit_sink_events_total", sink=sink, result="spilled"),
        value(registry, "jwt_audit_sink_queue_depth", sink=sink),
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_sink_attached_to_jwt_audit_publishes_on_the_middlewares_registry(
    registry: CollectorRegistry,
    rsa_key: SigningKey,
    tmp_path: Path,
    attach: Callable[[logging.Handler], Any],
) -> None:
    handler = attach(JSONLinesHandler(tmp_path / "audit.jsonl", flush_interval=0.05))
    AuditLogger().login_succeeded("before")  # written before any metrics: still counted
    handler.flush()
    middleware = wired(JWTAuditMiddleware(ok_app, **rsa_key.options(metrics=registry)))
    token = rsa_key.token()

    async def run() -> None:
        for _ in range(5):
            await status(middleware, authorization=f"Bearer {token}")

    asyncio.run(run())
    handler.flush()
    stats = handler.stats()
    assert stats["written"] == 6
    assert sink_values(registry, "jsonl") == (stats["written"], stats["spilled"], 0.0)


def test_a_sink_attached_later_publishes_when_it_starts(
    registry: CollectorRegistry,
    rsa_key: SigningKey,
    tmp_path: Path,
    attach: Callable[[logging.Handler], Any],
) -> None:
    middleware = wired(JWTAuditMiddleware(ok_app, **rsa_key.options(metrics=registry)))
    handler = attach(JSONLinesHandler(tmp_path / "audit.jsonl"))
    asyncio.run(status(middleware))
    handler.flush()
    assert sink_values(registry, "jsonl")[0] == handler.stats()["written"] == 1


def test_a_spilling_sink_counts_what_stats_counts(
    registry: CollectorRegistry, attach: Callable[[logging.Handler], Any]
) -> None:
    handler = attach(GatedHandler(queue_size=4, batch_size=1, block_timeout=0.0, metrics=registry))
    audit = AuditLogger()
    for i in range(3):  # the writer takes the first and waits on it
        audit.login_succeeded(f"user{i}")
    wait_for(lambda: handler._in_hand is not None)
    for i in range(3, 12):  # 4 fit in the queue; the rest spill
        audit.login_succeeded(f"user{i}")
    stats = handler.stats()
    assert stats["spilled"] == len(handler.spilled) > 0
    _, spilled, depth = sink_values(registry, "GatedHandler")
    assert spilled == stats["spilled"]
    assert depth == stats["queued"] == 4  # refreshed on the spill path, not by the stuck writer
    handler.open.set()  # the outage ends
    handler.flush()
    stats = handler.stats()
    wait_for(lambda: sink_values(registry, "GatedHandler")[2] == 0.0)
    assert sink_values(registry, "GatedHandler") == (stats["written"], stats["spilled"], 0.0)
    assert stats["written"] + stats["spilled"] == 12


def test_sinks_of_one_kind_sum_their_queues_and_own_metrics_win(
    registry: CollectorRegistry, rsa_key: SigningKey, attach: Callable[[logging.Handler], Any]
) -> None:
    own = CollectorRegistry()
    first = attach(GatedHandler(queue_size=100, batch_size=100, flush_interval=60))
    second = attach(GatedHandler(queue_size=100, batch_size=100, flush_interval=60))
    third = attach(GatedHandler(queue_size=100, batch_size=100, flush_interval=60, metrics=own))
    wired(JWTAuditMiddleware(ok_app, **rsa_key.options(metrics=registry)))
    audit = AuditLogger()
    for i in range(7):
        audit.login_succeeded(f"user{i}")
    for handler in (first, second, third):
        handler._report_depth()  # what the writer does at its next wake-up
    assert value(registry, "jwt_audit_sink_queue_depth", sink="GatedHandler") == 14
    assert value(own, "jwt_audit_sink_queue_depth", sink="GatedHandler") == 7
    for handler in (first, second, third):
        handler.open.set()


def test_publish_metrics_needs_a_registry(tmp_path: Path) -> None:
    handler = JSONLinesHandler(tmp_path / "audit.jsonl")
    try:
        with pytest.raises(ValueError, match="metrics"):
            handler.publish_metrics(False)
        handler.publish_metrics(CollectorRegistry())
        assert handler.metrics_label() == "jsonl"
    finally:
        handler.close()


# -- no cost when unused -------------------------------------------------------------------------


def run_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_metrics_off_imports_no_prometheus_client() -> None:
    out = run_python(
        """
        import asyncio, sys
        from jwt_audit_middleware import JWTAuditMiddleware
        from jwt_audit_middleware.testing import asgi_request

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware = JWTAuditMiddleware(app, algorithms=["HS256"], secret=b"s" * 32)
        asyncio.run(asgi_request(middleware, "/"))
        print("prometheus_client" in sys.modules)
        """
    )
    assert out.strip() == "False"


# -- multiprocess mode ------------------------------------------------------------------------

WORKER = """
import asyncio, os, sys
from jwt_audit_middleware import JWTAuditMiddleware
from jwt_audit_middleware.metrics import instrument
from jwt_audit_middleware.testing import asgi_request

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})

middleware = JWTAuditMiddleware(app, algorithms=["HS256"], secret=b"s" * 32, metrics=True)
lifecycle = middleware._lifecycle
instrument(lifecycle.settings.metrics, lifecycle.audit, lifecycle.gate)

async def run(count):
    for _ in range(count):
        await asgi_request(middleware, "/")

asyncio.run(run(int(sys.argv[1])))
"""


def test_multiprocess_mode_sums_the_processes(tmp_path: Path) -> None:
    """Two processes write their counts to PROMETHEUS_MULTIPROC_DIR; a third reads the sum."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(count)], env=env, cwd=ROOT)
        for count in (3, 4)
    ]
    assert [worker.wait(60) for worker in workers] == [0, 0]
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per process
    out = run_python(
        """
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        labels = {"outcome": "denied", "reason": "missing_token"}
        print(registry.get_sample_value("jwt_audit_requests_total", labels))
        """,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    assert out.strip() == "7.0"


@pytest.mark.parametrize("kind", ["jsonl", "sql"])
def test_the_real_sinks_take_metrics_at_construction(tmp_path: Path, kind: str) -> None:
    from jwt_audit_middleware.audit import AuditLogger
    from jwt_audit_middleware.events import app_event
    from jwt_audit_middleware.sinks import SQLAuditHandler

    registry = CollectorRegistry()
    handler: BackgroundHandler = (
        JSONLinesHandler(str(tmp_path / "audit.jsonl"), metrics=registry)
        if kind == "jsonl"
        else SQLAuditHandler(f"sqlite:///{tmp_path / 'audit.db'}", metrics=registry)
    )
    logger = logging.getLogger(f"jwt_audit_metrics_sink_{kind}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        AuditLogger(logger).emit(app_event("access", "allowed", subject="s"))
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert sink_values(registry, kind)[:2] == (1.0, 0.0)
    assert handler.stats()["written"] == 1
