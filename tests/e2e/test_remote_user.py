"""Django's ``RemoteUserMiddleware`` behind ours: the token's subject is the user, never a header.

Issue 18, item 1.  Django 5.2's async ``RemoteUserMiddleware`` reads
``META["HTTP_REMOTE_USER"]``, which under ASGI is the client's own
``Remote-User:`` header: with it, any client picked its Django user (a token
for alice plus ``Remote-User: admin`` gave the superuser; on an optional path
no token at all did).  Our middleware must remove client-sent identity headers
and put the verified ``sub`` where ``RemoteUserMiddleware`` reads it, clearing
it when there is none.

The site (``remote_user_site/``) runs under uvicorn (ASGI) and gunicorn (WSGI)
on 127.0.0.1, with a SQLite database migrated for this run that holds a
superuser ``admin``, and a key made for this run.  Servers are stopped by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from processes import free_port, stop_process, wait_serving
from test_servers import ROOT, START_TIMEOUT, bearer, gunicorn, uvicorn

from jwt_audit_middleware.testing import SigningKey

pytestmark = pytest.mark.e2e

KEY = SigningKey.generate("RS256", kid="remote-user-1")  # made for this run
AUDIENCE = "accounts"
SITE_PARENT = Path(__file__).resolve().parent  # holds the remote_user_site package
ARGV = {
    "uvicorn": uvicorn("remote_user_site.asgi:application", "--app-dir", str(SITE_PARENT)),
    "gunicorn": gunicorn("remote_user_site.wsgi", "--chdir", str(SITE_PARENT)),
}
NAMES = list(ARGV)
READY_PATH = "/optional/whoami"  # answers 200 without a token: one access event

PREPARE = """
import django
from django.core.management import call_command

django.setup()
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User

User.objects.create_superuser("admin", "admin@example.invalid", None)
"""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    audit_log: Path
    output: Path


def site_env(tmp: Path, name: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_AUDIT_", "FLASK_", "DJANGO_", "JWT_", "REMOTE_USER"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="remote_user_site.settings",
        JWT_PUBLIC_KEY=KEY.public_pem or "",
        JWT_AUDIENCE=AUDIENCE,
        REMOTE_USER_SITE_DB=str(tmp / f"{name}.sqlite3"),
        AUDIT_LOG=str(tmp / f"{name}.jsonl"),
        PYTHONPATH=os.pathsep.join([str(SITE_PARENT), str(ROOT)]),
    )
    return env


def prepare_database(tmp: Path) -> Path:
    """Migrate a database and create the superuser ``admin`` once; each server gets a copy."""
    env = site_env(tmp, "template")
    done = subprocess.run(
        [sys.executable, "-c", PREPARE],
        env=env,
        cwd=tmp,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return Path(env["REMOTE_USER_SITE_DB"])


def start(name: str, tmp: Path, template: Path) -> Server:
    port = free_port()
    env = site_env(tmp, name)
    shutil.copyfile(template, env["REMOTE_USER_SITE_DB"])
    output = tmp / f"{name}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            ARGV[name](port),
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gunicorn's worker goes with it
        )
    return Server(name, process, f"http://127.0.0.1:{port}", Path(env["AUDIT_LOG"]), output)


def wait_ready(server: Server) -> None:
    url = server.base_url + READY_PATH
    wait_serving(server.name, url, server.process, server.output, START_TIMEOUT)


def stop(server: Server) -> None:
    stop_process(server.process)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    tmp = tmp_path_factory.mktemp("remote_user")
    template = prepare_database(tmp)
    running: dict[str, Server] = {}
    try:
        for name in NAMES:
            running[name] = start(name, tmp, template)
        with ThreadPoolExecutor(len(running)) as pool:
            list(pool.map(wait_ready, running.values()))
        yield running
    finally:
        for server in running.values():
            stop(server)


def get(server: Server, path: str, headers: dict[str, str]) -> httpx.Response:
    """One request from a fresh client: no cookie of an earlier request comes along."""
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        response = http.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return response


def session_cookies(response: httpx.Response) -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith("sessionid=")]


def alice() -> str:
    return KEY.token(sub="alice", aud=AUDIENCE)


def user_of(body: dict[str, Any]) -> tuple[str | None, bool, bool]:
    return body["username"], body["is_superuser"], body["is_authenticated"]


def identity_keys(body: dict[str, Any]) -> tuple[str | None, str | None]:
    return body["remote_user"], body["http_remote_user"]


def assert_alice(body: dict[str, Any]) -> None:
    """Django's user is the token's subject, and no identity key of META holds the header's."""
    assert user_of(body) == ("alice", False, True), f"Django's user is not the token's: {body}"
    remote_user, http_remote_user = identity_keys(body)
    assert remote_user == "alice", f"META['REMOTE_USER'] is not the token's sub: {body}"
    assert http_remote_user in (None, "alice"), f"the client's header reached the app: {body}"


@pytest.mark.parametrize("name", NAMES)
def test_token_subject_beats_a_remote_user_header(name: str, servers: dict[str, Server]) -> None:
    """(a) A token for alice plus ``Remote-User: admin``: alice, not the superuser."""
    response = get(servers[name], "/whoami", {**bearer(alice()), "Remote-User": "admin"})
    assert_alice(response.json())


@pytest.mark.parametrize("name", NAMES)
def test_optional_path_remote_user_header_logs_nobody_in(
    name: str, servers: dict[str, Server]
) -> None:
    """(b) No token, ``Remote-User: admin`` on an optional path: anonymous, no session."""
    response = get(servers[name], "/optional/whoami", {"Remote-User": "admin"})
    body = response.json()
    assert user_of(body) == (None, False, False), f"a header logged someone in: {body}"
    assert session_cookies(response) == []
    assert identity_keys(body) == (None, None), f"the client's header reached the app: {body}"


@pytest.mark.parametrize("name", NAMES)
def test_token_alone_is_its_subject(name: str, servers: dict[str, Server]) -> None:
    """(c) A token for alice and no identity header: alice."""
    response = get(servers[name], "/whoami", bearer(alice()))
    assert_alice(response.json())


@pytest.mark.parametrize("header", ["remote_user", "REMOTE-USER", "Remote_User"])
@pytest.mark.parametrize("name", NAMES)
def test_variant_header_spellings_are_no_identity(
    name: str, header: str, servers: dict[str, Server]
) -> None:
    """(d) Other spellings of the header: still alice.

    Servers fold case and ``-`` into ``HTTP_REMOTE_USER``.  Current Django
    (ASGI) and gunicorn drop header names with ``_``; older releases and other
    servers fold them in too.
    """
    response = get(servers[name], "/whoami", {**bearer(alice()), header: "admin"})
    assert_alice(response.json())


def audit_events(server: Server, ids: list[str]) -> list[dict[str, Any]]:
    """Every event of the audit log, once one for each of ``ids`` is there and it settled."""

    def read() -> list[dict[str, Any]]:
        text = server.audit_log.read_text() if server.audit_log.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not set(ids) <= {e["request_id"] for e in read()}:
        time.sleep(0.05)
    time.sleep(0.3)  # a duplicate would be written within the sink's 0.05 s flush interval
    return read()


@pytest.mark.parametrize("name", NAMES)
def test_one_audit_event_per_request_with_the_token_subject(
    name: str, servers: dict[str, Server]
) -> None:
    """(e) Exactly one event per request; its subject is the token's, never the header's."""
    server = servers[name]
    token = alice()
    sent = [
        ("/whoami", {**bearer(token), "Remote-User": "admin"}, ("access", 200, None, "alice")),
        ("/optional/whoami", {"Remote-User": "admin"}, ("access", 200, None, None)),
        ("/whoami", bearer(token), ("access", 200, None, "alice")),
        ("/whoami", {**bearer(token), "REMOTE-USER": "admin"}, ("access", 200, None, "alice")),
        ("/whoami", {"Remote-User": "admin"}, ("denial", 401, "missing_token", None)),
    ]
    ids = [f"{name}-e-{i}" for i in range(len(sent))]
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for request_id, (path, headers, _) in zip(ids, sent, strict=True):
            http.cookies.clear()  # each request on its own, as the other tests send them
            http.get(path, headers={**headers, "X-Request-ID": request_id})

    events = audit_events(server, ids)
    mine = [e for e in events if e["request_id"] in ids]
    rows = [(e["event"], e["status"], e["reason"], e["subject"]) for e in mine]
    assert [e["request_id"] for e in mine] == ids
    assert [e["path"] for e in mine] == [path for path, _, _ in sent]
    assert rows == [expected for _, _, expected in sent]
    repeated = [rid for rid, n in Counter(e["request_id"] for e in events).items() if n > 1]
    assert repeated == []  # the other tests' requests too: one event each
    assert {e["subject"] for e in events} <= {"alice", None}  # "admin" never
    written = server.audit_log.read_text()
    assert token not in written
    assert token.rsplit(".", 1)[1] not in written
