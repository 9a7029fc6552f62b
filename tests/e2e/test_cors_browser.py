"""CORS in a real browser (issue 13): a page on one origin calls the API on another.

Debian's ``chromium``, headless, driven by Selenium through Debian's
``chromedriver`` (``Service(executable_path=...)``: Selenium Manager never runs,
nothing is downloaded).  One uvicorn server serves the page
(``cors_apps/page.py``, origin A); each API (origin B, another port) is a real
server too, with its framework's CORS layer and our middleware in the order the
README gives, writing its audit events as JSON lines to a file.  The page's
script calls ``fetch(url, {headers: {Authorization: "Bearer ..."}})``, which
makes the browser send a preflight first, and shows what it could read.

For each framework: the call with a valid token shows the JSON, the call
without one shows a readable 401 and its JSON error, and the events file holds
exactly the events the README's CORS section promises.  The other order
(JWT outermost) and Flask's extension alone show what ``pass_cors_preflight``
does and what it cannot do: the preflight passes, audited as an exempt
``access``, but the 401 has no CORS headers and the page sees a network error.

Without chromium, chromedriver or a package of the ``test`` extra these tests
skip; under ``CI=true`` (where ``.ci/run`` installs them all) they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from processes import free_port, stop_process, wait_serving

from jwt_audit_middleware.testing import SigningKey

pytestmark = pytest.mark.e2e

E2E = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
KEY = SigningKey.generate("RS256", kid="cors-1")  # made for this run
START_TIMEOUT = 30.0
READY_PATH = "/ready"  # asked until the server answers (a 401 or 404); its events are left out
CALL_TIMEOUT = 10.0
NEEDED_PACKAGES = ("selenium", "corsheaders", "flask_cors")


def unavailable(why: str) -> NoReturn:
    """Skip on a developer's machine; fail under CI, which installs everything."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: .ci/run installs it, so under CI=true this is a failure")
    pytest.skip(why)


@dataclass
class Server:
    """One server process on 127.0.0.1 and the file its audit events go to."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    output: Path
    audit_log: Path

    def wait_ready(self) -> None:
        """Until it answers, or fail with the tail of its output."""
        wait_serving(self.name, self.url + READY_PATH, self.process, self.output, START_TIMEOUT)

    def events(self) -> list[tuple[Any, ...]]:
        """Every event it wrote, as summaries: stops it first, so its sink has flushed."""
        status = stop_process(self.process)  # uvicorn ends by its SIGTERM, gunicorn with 0
        assert status in (0, -signal.SIGTERM), self.output.read_text(errors="replace")[-3000:]
        lines = self.audit_log.read_text().splitlines() if self.audit_log.exists() else []
        events = [json.loads(line) for line in lines]
        return [summary(event) for event in events if event["path"] != READY_PATH]


def summary(event: dict[str, Any]) -> tuple[Any, ...]:
    """The fields this test promises, in one comparable tuple."""
    return (
        event["event"],
        event["outcome"],
        event["reason"],
        event["method"],
        event["path"],
        event["status"],
        event["subject"],
        event["detail"],
    )


def uvicorn(app: str) -> Callable[[int], list[str]]:
    return lambda port: [
        str(BIN / "uvicorn"), app, "--app-dir", str(E2E), "--host", "127.0.0.1",
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip


def gunicorn(app: str) -> Callable[[int], list[str]]:
    return lambda port: [
        str(BIN / "gunicorn"), app, "--chdir", str(E2E), "--bind", f"127.0.0.1:{port}",
        "--workers", "1", "--graceful-timeout", "5", "--log-level", "warning",
    ]  # fmt: skip


SERVERS = {
    "page": uvicorn("cors_apps.page:app"),
    "fastapi": uvicorn("cors_apps.fastapi_api:app"),
    "fastapi_jwt_outermost": uvicorn("cors_apps.fastapi_api:jwt_outermost"),
    "django": uvicorn("cors_apps.django_site.asgi:application"),
    "flask": gunicorn("cors_apps.flask_api:app"),
    "flask_cors_on_denials": gunicorn("cors_apps.flask_api:with_cors_on_denials"),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """All the servers, started at once; each test stops its API to read the events."""
    for package in NEEDED_PACKAGES:
        if importlib.util.find_spec(package) is None:
            unavailable(f"{package} is not installed (pip install -e '.[test]')")
    workdir = tmp_path_factory.mktemp("cors")
    ports = {name: free_port() for name in SERVERS}
    page_origin = f"http://127.0.0.1:{ports['page']}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(E2E), os.environ.get("PYTHONPATH")])),
        "CORS_PAGE_ORIGIN": page_origin,
        "CORS_PUBLIC_KEY": KEY.public_pem or "",
    }
    started: dict[str, Server] = {}
    try:
        for name, argv in SERVERS.items():
            output = workdir / f"{name}.out"
            audit_log = workdir / f"{name}.jsonl"
            with output.open("wb") as sink:
                process = subprocess.Popen(
                    argv(ports[name]),
                    cwd=E2E,
                    env={**env, "AUDIT_LOG": str(audit_log)},
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            url = f"http://127.0.0.1:{ports[name]}"
            started[name] = Server(name, url, process, output, audit_log)
        with ThreadPoolExecutor(len(started)) as pool:
            list(pool.map(Server.wait_ready, started.values()))
        yield started
    finally:
        for server in started.values():
            stop_process(server.process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless chromium through Debian's chromedriver."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        unavailable("chromium or chromedriver is missing (Debian: chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_script_timeout(CALL_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser: Any, servers: dict[str, Server]) -> Callable[[str, str], dict[str, Any]]:
    """``call(url, token)``: the page's script fetches ``url``; what the page then shows."""
    browser.get(servers["page"].url + "/")

    def call(url: str, token: str) -> dict[str, Any]:
        browser.execute_async_script(
            "callApi(arguments[0], arguments[1]).then(arguments[arguments.length - 1])", url, token
        )
        shown: dict[str, Any] = json.loads(browser.find_element("id", "result").text)
        return shown

    return call


def ok(owner: str) -> dict[str, Any]:
    return {"status": 200, "body": {"owner": owner, "orders": [1, 2]}}


READABLE_401 = {"status": 401, "body": {"error": "missing_token"}}
UNREADABLE = {"error": "TypeError: Failed to fetch"}  # what a CORS failure looks like to a page


def shown_401(shown: dict[str, Any]) -> dict[str, Any]:
    """The page's view of a 401, its description left out (asserted in the unit tests)."""
    if "body" in shown:
        return {**shown, "body": {"error": shown["body"]["error"]}}
    return shown


def access(path: str, subject: str) -> tuple[Any, ...]:
    return ("access", "allowed", None, "GET", path, 200, subject, None)


def preflight(path: str) -> tuple[Any, ...]:
    return ("access", "allowed", None, "OPTIONS", path, 200, None, "CORS preflight")


def denial(path: str) -> tuple[Any, ...]:
    return ("denial", "denied", "missing_token", "GET", path, 401, None, DENIAL_DETAIL)


DENIAL_DETAIL = "no Authorization header"


@pytest.mark.parametrize(
    ("name", "path"), [("fastapi", "/orders"), ("django", "/orders/")], ids=["fastapi", "django"]
)
def test_the_documented_order_works_in_the_browser(
    page: Callable[[str, str], dict[str, Any]], servers: dict[str, Server], name: str, path: str
) -> None:
    """CORS layer outermost: it answers the preflight (never audited) and decorates our 401."""
    api = servers[name]
    assert page(api.url + path, KEY.token(sub="ann")) == ok("ann")
    assert shown_401(page(api.url + path, "")) == READABLE_401
    # the preflight before the first call never reached us; a GET without a token needs none
    assert api.events() == [access(path, "ann"), denial(path)]


def test_flask_with_cors_on_denials_works_in_the_browser(
    page: Callable[[str, str], dict[str, Any]], servers: dict[str, Server]
) -> None:
    """flask-cors answers the preflight that passed us; ``cors_on_denials`` decorates our 401."""
    api = servers["flask_cors_on_denials"]
    assert page(api.url + "/orders", KEY.token(sub="ann")) == ok("ann")
    assert shown_401(page(api.url + "/orders", "")) == READABLE_401
    assert api.events() == [preflight("/orders"), access("/orders", "ann"), denial("/orders")]


@pytest.mark.parametrize("name", ["fastapi_jwt_outermost", "flask"])
def test_a_passed_preflight_makes_calls_work_but_the_401_is_unreadable(
    page: Callable[[str, str], dict[str, Any]], servers: dict[str, Server], name: str
) -> None:
    """Our layer outside the CORS layer: the preflight passes (exempt access), the 401 is opaque.

    For Flask this is the extension with flask-cors alone: its 401 is answered
    before Flask runs, so flask-cors never sees it (the README's ``cors_on_denials``).
    """
    api = servers[name]
    assert page(api.url + "/orders", KEY.token(sub="ann")) == ok("ann")
    assert page(api.url + "/orders", "") == UNREADABLE
    assert api.events() == [preflight("/orders"), access("/orders", "ann"), denial("/orders")]
