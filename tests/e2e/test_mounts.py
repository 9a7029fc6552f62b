"""Path rules follow the path the app routes on, under real servers and real mounts (issue 11).

``exempt_paths``, ``optional_paths`` and ``path_scopes`` are matched against
what the wrapped app routes on: ASGI ``path`` minus ``root_path``, WSGI
``PATH_INFO`` (never ``SCRIPT_NAME``), Django ``request.path_info``.  The audit
event's ``path`` is the full path the client asked for.  Each case below was a
hole before the fix; each now asserts the secure answer and its event.

The apps are in ``mount_apps/``; every server runs on 127.0.0.1 on a free port
with a key made for this run, writes its audit events as JSON lines, and is
stopped by pid.  Case 8 (a misspelt option) starts servers that must refuse
to serve.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import free_port, stop_process
from test_servers import START_TIMEOUT, bearer, gunicorn, uvicorn

from jwt_audit_middleware.testing import SigningKey

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
APPS_PARENT = Path(__file__).resolve().parent  # holds the mount_apps package
KEY = SigningKey.generate("RS256", kid="mounts-1")  # made for this run
AUDIENCE = "mounts"
BAD_OPTION_DEADLINE = 10.0  # seconds for a misconfigured server to give up by itself


@dataclass(frozen=True)
class Spec:
    argv: Callable[[int], list[str]]
    ready_path: str  # any HTTP answer means the server is up
    env: tuple[tuple[str, str], ...] = ()


SPECS = {
    # case 1: a client's SCRIPT_NAME header, believed from 127.0.0.1
    "script-name-header": Spec(
        gunicorn("mount_apps.plain_wsgi:script_name", "--forwarded-allow-ips", "127.0.0.1"),
        "/health",
    ),
    # case 2: uvicorn --root-path (the app behind a proxy that strips /api)
    "root-path": Spec(
        uvicorn("mount_apps.starlette_apps:admin_scoped", "--root-path", "/api"), "/orders"
    ),
    # case 3: a FastAPI sub-app mounted at /v1 carries the middleware
    "fastapi-mount": Spec(uvicorn("mount_apps.fastapi_mount:app"), "/ready"),
    # case 4: werkzeug's DispatcherMiddleware mounts a Flask app at /api
    "dispatcher": Spec(gunicorn("mount_apps.flask_dispatch:application"), "/api/health"),
    # case 5: Django under gunicorn with the SCRIPT_NAME environment variable
    "django-script-name": Spec(
        gunicorn("mount_apps.mount_site.wsgi"), "/api/health", (("SCRIPT_NAME", "/api"),)
    ),
    # case 6: "/" is the rule for every path no longer prefix claims
    "root-rule": Spec(uvicorn("mount_apps.starlette_apps:root_rule"), "/orders"),
    # case 7: optional and scoped needs a token, under ASGI and WSGI
    "optional-scoped-uvicorn": Spec(
        uvicorn("mount_apps.starlette_apps:optional_scoped"), "/api/public"
    ),
    "optional-scoped-gunicorn": Spec(
        gunicorn("mount_apps.plain_wsgi:optional_scoped"), "/api/public"
    ),
}
# case 8: a misspelt option in middleware Starlette/FastAPI build at startup
BAD_SPECS = {
    "fastapi-add-middleware": Spec(uvicorn("mount_apps.bad_option:fastapi_app"), "/"),
    "starlette-middleware-list": Spec(uvicorn("mount_apps.bad_option:starlette_app"), "/"),
}


@dataclass
class Server:
    name: str
    spec: Spec
    process: subprocess.Popen[bytes]
    port: int
    audit_log: Path
    output: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-3000:]


def start(name: str, spec: Spec, tmp: Path) -> Server:
    port = free_port()
    audit_log = tmp / f"{name}.jsonl"
    output = tmp / f"{name}.out"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_", "FLASK_", "DJANGO_", "MOUNT_", "SCRIPT_NAME"))
    }
    env.update(
        spec.env,
        MOUNT_PUBLIC_KEY=KEY.public_pem or "",
        MOUNT_AUDIENCE=AUDIENCE,
        AUDIT_LOG=str(audit_log),
        PYTHONPATH=os.pathsep.join([str(APPS_PARENT), str(ROOT)]),
    )
    with output.open("wb") as sink:
        process = subprocess.Popen(
            spec.argv(port),
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gunicorn's worker goes with it
        )
    return Server(name, spec, process, port, audit_log, output)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            httpx.get(server.base_url + server.spec.ready_path, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return
    raise AssertionError(f"{server.name} did not start:\n{server.log()}")


def stop(server: Server) -> None:
    stop_process(server.process)


def accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Outcome:
    """How a misconfigured server ended: its exit code (``None``: still running) and output."""

    returncode: int | None
    seconds: float
    served: bool
    output: str


def wait_exit(server: Server) -> Outcome:
    """Wait for the server to exit by itself; a server that starts serving has failed already."""
    began = time.monotonic()
    served = False
    while time.monotonic() - began < BAD_OPTION_DEADLINE:
        if server.process.poll() is not None:
            break
        if accepts_connections(server.port):
            served = True
            break
        time.sleep(0.1)
    return Outcome(server.process.poll(), time.monotonic() - began, served, server.log())


@pytest.fixture(scope="module")
def started(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, Server], dict[str, Outcome]]]:
    """Every server of the module, started at once: the good ones ready, the bad ones ended."""
    tmp = tmp_path_factory.mktemp("mounts")
    good: dict[str, Server] = {}
    bad: dict[str, Server] = {}
    try:
        for name, spec in SPECS.items():
            good[name] = start(name, spec, tmp)
        for name, spec in BAD_SPECS.items():
            bad[name] = start(name, spec, tmp)
        everyone = [*good.values(), *bad.values()]
        with ThreadPoolExecutor(len(everyone)) as pool:
            ready = pool.map(wait_ready, good.values())
            ended = dict(zip(bad, pool.map(wait_exit, bad.values()), strict=True))
            list(ready)
        yield good, ended
    finally:
        for server in [*good.values(), *bad.values()]:
            stop(server)


@pytest.fixture(scope="module")
def servers(started: tuple[dict[str, Server], dict[str, Outcome]]) -> dict[str, Server]:
    return started[0]


@pytest.fixture(scope="module")
def bad_outcomes(started: tuple[dict[str, Server], dict[str, Outcome]]) -> dict[str, Outcome]:
    return started[1]


def token(scope: str | None = None, sub: str = "alice") -> str:
    return KEY.token(sub=sub, aud=AUDIENCE, **({"scope": scope} if scope is not None else {}))


def event_of(server: Server, request_id: str) -> dict[str, Any]:
    """The one audit event of ``request_id``."""
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        text = server.audit_log.read_text() if server.audit_log.exists() else ""
        mine = [e for e in map(json.loads, text.splitlines()) if e["request_id"] == request_id]
        if mine:
            break
        time.sleep(0.05)
    assert len(mine) == 1, f"{server.name}: events of {request_id}: {mine}\n{server.log()}"
    return mine[0]


def ask(
    server: Server, path: str, bearer_token: str | None = None, **headers: str
) -> tuple[httpx.Response, dict[str, Any]]:
    """``GET path``; the response and the audit event it caused."""
    request_id = f"{server.name}-{uuid.uuid4().hex[:12]}"
    sent = {"X-Request-ID": request_id, **headers}
    if bearer_token is not None:
        sent.update(bearer(bearer_token))
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        response = http.get(path, headers=sent)
    return response, event_of(server, request_id)


def row(event: dict[str, Any]) -> tuple[str, int, str | None, str]:
    return event["event"], event["status"], event["reason"], event["path"]


def assert_missing_token(response: httpx.Response, event: dict[str, Any], path: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert row(event) == ("denial", 401, "missing_token", path)


def assert_insufficient_scope(response: httpx.Response, event: dict[str, Any], path: str) -> None:
    assert response.status_code == 403, response.text
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert row(event) == ("denial", 403, "insufficient_scope", path)


def assert_access(response: httpx.Response, event: dict[str, Any], path: str) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert row(event) == ("access", 200, None, path)
    body: dict[str, Any] = response.json()
    return body


def test_script_name_header_cannot_make_a_path_exempt(servers: dict[str, Server]) -> None:
    """Case 1: ``SCRIPT_NAME: /health`` on ``/health/admin``: the app routes ``/admin``.

    gunicorn 27 takes a ``SCRIPT_NAME`` header from an address in
    ``--forwarded-allow-ips`` (it is in the default ``--forwarder-headers``)
    and requires the request path to start with it: ``/health/admin`` becomes
    ``SCRIPT_NAME=/health``, ``PATH_INFO=/admin``.
    """
    server = servers["script-name-header"]
    header = {"SCRIPT_NAME": "/health"}

    response, event = ask(server, "/health/admin", **header)
    assert_missing_token(response, event, "/health/admin")

    # the setup is real: with a token the view sees the split the rule must not follow
    response, event = ask(server, "/health/admin", token("read"), **header)
    body = assert_access(response, event, "/health/admin")
    assert body == {"script_name": "/health", "path_info": "/admin", "remote_user": "alice"}

    # and the exempt path itself is still exempt
    response, event = ask(server, "/health")
    body = assert_access(response, event, "/health")
    assert body == {"script_name": "", "path_info": "/health", "remote_user": None}


def test_uvicorn_root_path(servers: dict[str, Server]) -> None:
    """Case 2: ``uvicorn --root-path /api`` puts ``/api`` in front of ``path``.

    The client's ``/api/admin`` reaches uvicorn as ``/admin`` (a proxy strips
    the prefix); the app sees ``path=/api/admin``, ``root_path=/api`` and
    routes ``/admin``, where ``path_scopes={"/admin": ["admin"]}`` applies.
    """
    server = servers["root-path"]

    response, event = ask(server, "/admin", token("read"))
    assert_insufficient_scope(response, event, "/api/admin")

    response, event = ask(server, "/admin", token("admin"))
    body = assert_access(response, event, "/api/admin")
    assert (body["path"], body["root_path"], body["sub"]) == ("/api/admin", "/api", "alice")

    response, event = ask(server, "/orders")  # not scoped, but not exempt either
    assert_missing_token(response, event, "/api/orders")


def test_fastapi_sub_app_mount(servers: dict[str, Server]) -> None:
    """Case 3: the middleware on a sub-app mounted at ``/v1`` matches ``/admin``."""
    server = servers["fastapi-mount"]

    response, event = ask(server, "/v1/admin", token("read"))
    assert_insufficient_scope(response, event, "/v1/admin")

    response, event = ask(server, "/v1/admin", token("admin"))
    body = assert_access(response, event, "/v1/admin")
    assert body == {"path": "/v1/admin", "root_path": "/v1"}


def test_werkzeug_dispatcher_mount(servers: dict[str, Server]) -> None:
    """Case 4: a Flask app at ``/api`` in ``DispatcherMiddleware``: rules see ``PATH_INFO``."""
    server = servers["dispatcher"]

    response, event = ask(server, "/api/admin", token("read"))
    assert_insufficient_scope(response, event, "/api/admin")

    response, event = ask(server, "/api/health")
    body = assert_access(response, event, "/api/health")
    assert body == {"script_name": "/api", "path_info": "/health", "sub": None}

    response, event = ask(server, "/api/orders")
    assert_missing_token(response, event, "/api/orders")

    response, event = ask(server, "/api/admin", token("admin"))
    body = assert_access(response, event, "/api/admin")
    assert body == {"script_name": "/api", "path_info": "/admin", "sub": "alice"}


def test_django_under_script_name(servers: dict[str, Server]) -> None:
    """Case 5: Django under gunicorn with ``SCRIPT_NAME=/api`` in its environment.

    gunicorn reads the ``SCRIPT_NAME`` environment variable for every request
    and strips it from the path; Django's ``request.path_info`` is the rest.
    """
    server = servers["django-script-name"]

    response, event = ask(server, "/api/admin", token("read"))
    assert_insufficient_scope(response, event, "/api/admin")

    response, event = ask(server, "/api/health")
    body = assert_access(response, event, "/api/health")
    assert body == {"script_name": "/api", "path_info": "/health", "path": "/api/health"}

    response, event = ask(server, "/api/orders")
    assert_missing_token(response, event, "/api/orders")

    response, event = ask(server, "/api/admin", token("admin"))
    body = assert_access(response, event, "/api/admin")
    assert body == {"script_name": "/api", "path_info": "/admin", "path": "/api/admin"}


def test_root_rule_covers_every_other_path(servers: dict[str, Server]) -> None:
    """Case 6: ``{"/": ["api"], "/admin": ["admin"]}``: the longest prefix wins."""
    server = servers["root-rule"]

    response, event = ask(server, "/orders", token())
    assert_insufficient_scope(response, event, "/orders")

    response, event = ask(server, "/orders", token("api"))
    assert_access(response, event, "/orders")

    response, event = ask(server, "/admin", token("api"))
    assert_insufficient_scope(response, event, "/admin")

    response, event = ask(server, "/admin", token("admin"))
    assert_access(response, event, "/admin")


@pytest.mark.parametrize("name", ["optional-scoped-uvicorn", "optional-scoped-gunicorn"])
def test_optional_and_scoped_needs_a_token(name: str, servers: dict[str, Server]) -> None:
    """Case 7: ``optional_paths=["/api"]`` with ``path_scopes={"/api/admin": ["admin"]}``."""
    server = servers[name]

    response, event = ask(server, "/api/admin")
    assert_missing_token(response, event, "/api/admin")

    response, event = ask(server, "/api/public")
    assert_access(response, event, "/api/public")

    response, event = ask(server, "/api/admin", token("read"))
    assert_insufficient_scope(response, event, "/api/admin")

    response, event = ask(server, "/api/admin", token("admin"))
    assert_access(response, event, "/api/admin")


@pytest.mark.parametrize("name", list(BAD_SPECS))
def test_misspelt_option_stops_the_server(name: str, bad_outcomes: dict[str, Outcome]) -> None:
    """Case 8: ``algoritms=`` in lazily built middleware: uvicorn exits, naming the option."""
    outcome = bad_outcomes[name]
    assert not outcome.served, f"{name} is serving with a misspelt option:\n{outcome.output}"
    assert outcome.returncode is not None, (
        f"{name} still running after {BAD_OPTION_DEADLINE} s:\n{outcome.output}"
    )
    assert outcome.returncode != 0, outcome.output
    assert "algoritms" in outcome.output
    assert "algorithms" in outcome.output.replace("algoritms", "")
