"""Every example under a real server on 127.0.0.1: uvicorn and gunicorn, as users run them.

Each server is a subprocess on a free port, configured through environment
variables with a key made for this run; it writes its audit events as JSON
lines to a file, which the tests read back.  Servers are stopped by pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import free_port, stop_process, wait_serving
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from jwt_audit_middleware.testing import SigningKey

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KEY = SigningKey.generate("RS256", kid="e2e-1")  # made for this run
FORGER = SigningKey.generate("RS256", kid="e2e-1")
AUDIENCE = "orders"
START_TIMEOUT = 30.0


@dataclass
class Example:
    """One example app, how to serve it, and what to ask it."""

    name: str
    argv: Callable[[int], list[str]]
    env: dict[str, str]
    ok_path: str  # needs a token; its JSON says what the view saw
    saw: Callable[[dict[str, Any]], dict[str, Any]]
    expect_saw: dict[str, Any]
    health_path: str
    scope_request: tuple[str, str]  # method, path: the token lacks the scope it needs
    cwd: Path = ROOT
    extra_paths: list[str] = field(default_factory=list)


def uvicorn(app: str, *more: str) -> Callable[[int], list[str]]:
    return lambda port: [
        str(BIN / "uvicorn"), app, *more, "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip


def gunicorn(app: str, *more: str) -> Callable[[int], list[str]]:
    return lambda port: [
        str(BIN / "gunicorn"), app, *more, "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--graceful-timeout", "5", "--log-level", "warning",
    ]  # fmt: skip


PEM = KEY.public_pem or ""
CORE_ENV = {
    "JWT_AUDIT_ALGORITHMS": "RS256",
    "JWT_AUDIT_PUBLIC_KEY": PEM,
    "JWT_AUDIT_AUDIENCE": AUDIENCE,
    "JWT_AUDIT_EXEMPT_PATHS": "/health",
}
DJANGO_ENV = {"JWT_PUBLIC_KEY": PEM, "JWT_AUDIENCE": AUDIENCE}
DJANGO_DIR = ROOT / "examples" / "django_project"


def django_saw(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("sub", "remote_user", "same_as_get_claims")}


EXAMPLES = [
    Example(
        "fastapi-uvicorn",
        uvicorn("examples.fastapi_app:app"),
        CORE_ENV,
        "/orders",
        lambda body: body,
        {"owner": "alice", "orders": []},
        "/health",
        ("POST", "/orders"),
    ),
    Example(
        "django-asgi-uvicorn",
        uvicorn("orders_site.asgi:application", "--app-dir", str(DJANGO_DIR)),
        DJANGO_ENV,
        "/orders/",
        django_saw,
        {"sub": "alice", "remote_user": "alice", "same_as_get_claims": True},
        "/health/",
        ("GET", "/admin-api/report/"),
        extra_paths=["/async/orders/"],
    ),
    Example(
        "flask-gunicorn",
        gunicorn("examples.flask_app:create_app()"),
        {
            "FLASK_JWT_AUDIT_ALGORITHMS": '["RS256"]',
            "FLASK_JWT_AUDIT_PUBLIC_KEY": PEM,
            "FLASK_JWT_AUDIT_AUDIENCE": AUDIENCE,
            "FLASK_JWT_AUDIT_EXEMPT_PATHS": '["/health"]',
            "FLASK_JWT_AUDIT_PATH_SCOPES": '{"/orders": ["orders:read"]}',
        },
        "/orders",
        lambda body: body,
        {"owner": "alice", "remote_user": "alice"},
        "/health",
        ("GET", "/orders"),
    ),
    Example(
        "django-wsgi-gunicorn",
        gunicorn("orders_site.wsgi", "--chdir", str(DJANGO_DIR)),
        DJANGO_ENV,
        "/orders/",
        django_saw,
        {"sub": "alice", "remote_user": "alice", "same_as_get_claims": True},
        "/health/",
        ("GET", "/admin-api/report/"),
    ),
    Example(
        "legacy-wsgi-gunicorn",
        gunicorn("examples.legacy_wsgi:application"),
        {**CORE_ENV, "JWT_AUDIT_PATH_SCOPES": '{"/admin": ["admin"]}'},
        "/reports",
        lambda body: body,
        {"remote_user": "alice", "path": "/reports"},
        "/health",
        ("GET", "/admin/users"),
    ),
]


@dataclass
class Running:
    example: Example
    process: subprocess.Popen[bytes]
    base_url: str
    audit_log: Path
    output: Path


def start(example: Example, tmp: Path) -> Running:
    port = free_port()
    audit_log = tmp / f"{example.name}.jsonl"
    output = tmp / f"{example.name}.out"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_AUDIT_", "FLASK_", "DJANGO_", "JWT_"))
    }
    env.update(example.env, AUDIT_LOG=str(audit_log), PYTHONPATH=str(ROOT))
    with output.open("wb") as sink:
        process = subprocess.Popen(
            example.argv(port),
            cwd=example.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gunicorn's workers go with it
        )
    return Running(example, process, f"http://127.0.0.1:{port}", audit_log, output)


def wait_ready(server: Running) -> None:
    url = server.base_url + server.example.health_path
    wait_serving(server.example.name, url, server.process, server.output, START_TIMEOUT)


def stop(server: Running) -> None:
    stop_process(server.process)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Running]]:
    tmp = tmp_path_factory.mktemp("e2e")
    running = {example.name: start(example, tmp) for example in EXAMPLES}
    try:
        with ThreadPoolExecutor(len(running)) as pool:
            list(pool.map(wait_ready, running.values()))
        yield running
    finally:
        for server in running.values():
            stop(server)


def read_events(server: Running, count: int) -> list[dict[str, Any]]:
    """The JSON lines of the audit log, once ``count`` of them are there."""
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline:
        if server.audit_log.exists():
            lines = server.audit_log.read_text().splitlines()
            if len(lines) >= count:
                break
        time.sleep(0.05)
    return [json.loads(line) for line in lines]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("name", [example.name for example in EXAMPLES])
def test_example_under_a_real_server(name: str, servers: dict[str, Running]) -> None:
    server = servers[name]
    example = server.example
    token = KEY.token(sub="alice", aud=AUDIENCE, scope="orders:read", tenant="t1")
    unscoped = KEY.token(sub="bob", aud=AUDIENCE)
    forged = FORGER.token(sub="mallory", aud=AUDIENCE, scope="orders:read admin orders:write")
    expired = KEY.token(sub="alice", aud=AUDIENCE, expires_in=-60)
    start_lines = len(read_events(server, 0))
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        ok = http.get(example.ok_path, headers={**bearer(token), "X-Request-ID": f"{name}-1"})
        missing = http.get(example.ok_path)
        expired_r = http.get(example.ok_path, headers=bearer(expired))
        forged_r = http.get(example.ok_path, headers=bearer(forged))
        method, scope_path = example.scope_request
        scope_r = http.request(method, scope_path, headers=bearer(unscoped))
        health = http.get(example.health_path)
        extras = [http.get(path, headers=bearer(token)) for path in example.extra_paths]

    assert ok.status_code == 200, ok.text
    assert example.saw(ok.json()) == example.expect_saw
    for extra in extras:
        assert extra.status_code == 200
        assert extra.json()["sub"] == "alice"
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="api"'
    for denied in (expired_r, forged_r):
        assert denied.status_code == 401
        assert 'error="invalid_token"' in denied.headers["www-authenticate"]
        assert denied.json()["error"] == "invalid_token"
    assert scope_r.status_code == 403
    assert 'error="insufficient_scope"' in scope_r.headers["www-authenticate"]
    assert scope_r.headers["cache-control"] == "no-store"
    assert health.status_code == 200

    expected = [
        ("access", 200, None, "alice"),
        ("denial", 401, "missing_token", None),
        ("denial", 401, "expired", "alice"),
        ("denial", 401, "bad_signature", None),
        ("denial", 403, "insufficient_scope", "bob"),
        ("access", 200, None, None),
    ] + [("access", 200, None, "alice")] * len(extras)
    events = read_events(server, start_lines + len(expected))[start_lines:]
    assert [(e["event"], e["status"], e["reason"], e["subject"]) for e in events] == expected
    first = events[0]
    assert first["request_id"] == f"{name}-1"
    assert first["path"] == example.ok_path
    assert first["client_ip"] == "127.0.0.1"
    assert first["scopes"] == ["orders:read"]
    assert first["logger"] == "jwt_audit"
    assert first["schema"] == "jwt-audit/1"
    if name.startswith("django"):
        assert first["claims"] == {"tenant": "t1"}  # LOG_CLAIMS in the example's JWT_AUDIT
    written = server.audit_log.read_text()
    for secret in (token, forged, expired, unscoped):
        assert secret not in written
        assert secret.rsplit(".", 1)[1] not in written


def test_websocket_through_uvicorn(servers: dict[str, Running]) -> None:
    server = servers["fastapi-uvicorn"]
    url = server.base_url.replace("http://", "ws://") + "/ws"
    start_lines = len(read_events(server, 0))
    with pytest.raises(InvalidStatus) as refused:
        with connect(url, open_timeout=10):
            pass
    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    token = KEY.token(sub="carol", aud=AUDIENCE)
    with connect(url, additional_headers=bearer(token), open_timeout=10) as websocket:
        assert json.loads(websocket.recv(timeout=10)) == {"hello": "carol"}
    events = read_events(server, start_lines + 2)[start_lines:]
    rows = [(e["protocol"], e["event"], e["status"], e["reason"], e["subject"]) for e in events]
    assert rows == [
        ("websocket", "denial", 401, "missing_token", None),
        ("websocket", "access", 101, None, "carol"),
    ]
