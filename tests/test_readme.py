"""Every README code block that can run, runs: the README cannot drift from the package.

The marker convention
=====================

Each fenced ```` ```python ```` block of README.md is, by default, **run as
pasted**: written to a file in one scratch directory shared by the whole README
and run there with ``python`` (a fresh process, no ``JWT_AUDIT_*`` variables),
in README order, so a block may use the files an earlier block made (the
quick start's ``make_token.py`` writes ``public.pem``).  It must exit 0.

A block that is not a whole program says so on the line right before its fence,
with one HTML comment (invisible on GitHub)::

    <!-- readme-test: skip: <why> -->          not run (a fragment, needs a server...)
    <!-- readme-test: run-as <path> -->        run as <path>; stdout kept in <path>.out
    <!-- readme-test: file <path> -->          written to <path>, not run: a module or
                                               settings file that the scenarios below use
    <!-- readme-test: file <path> append -->   appended to <path> (e.g. the settings.py
                                               of the `startproject` made beforehand)

Blocks of other languages (``sh``, ``json``...) are not run; each ``sh`` line
that names an example under ``examples/`` must be that example's own ``Run:``
line (``test_run_lines_are_the_examples_own``).  A new python block with no
marker that cannot run fails ``test_block_runs`` with its README line number:
mark it (``skip`` with a reason is fine for a fragment), or make it whole.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<kind>skip|run-as|file)\b:?\s*(?P<arg>.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
TIMEOUT = 120


@dataclass
class Block:
    """One fenced block of the README."""

    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    kind: str  # "run", "run-as", "file", "skip"
    arg: str = ""

    @property
    def label(self) -> str:
        return f"README.md:{self.line}"


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        previous = lines[start - 1] if start else ""
        marker = MARKER.search(previous)
        kind, arg = ("run", "") if marker is None else (marker["kind"], marker["arg"])
        blocks.append(
            Block(start + 1, match[1], "\n".join(lines[start + 1 : end]) + "\n", kind, arg)
        )
        i = end + 1
    return blocks


BLOCKS = parse(README.read_text())
PYTHON = [block for block in BLOCKS if block.lang == "python"]


def clean_env(**more: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_AUDIT_", "FLASK_", "DJANGO_", "JWT_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [".", str(ROOT), env.get("PYTHONPATH")]))
    env.update(more)
    return env


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@dataclass
class Outcome:
    block: Block
    result: subprocess.CompletedProcess[str] | None


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Outcome]]:
    """The README followed in one directory: a `startproject`, then every block in order."""
    work = tmp_path_factory.mktemp("readme")
    made = run([sys.executable, "-m", "django", "startproject", "mysite", "."], work)
    assert made.returncode == 0, made.stderr
    outcomes: dict[int, Outcome] = {}
    for block in PYTHON:
        result = None
        if block.kind == "file":
            name, _, mode = block.arg.partition(" ")
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("a" if mode.strip() == "append" else "w") as out:
                out.write("\n" + block.text if mode.strip() == "append" else block.text)
        elif block.kind in ("run", "run-as"):
            name = block.arg or f"readme_block_{block.line}.py"
            (work / name).write_text(block.text)
            result = run([sys.executable, name], work)
            (work / (name + ".out")).write_text(result.stdout)
        outcomes[block.line] = Outcome(block, result)
    return work, outcomes


def test_the_readme_has_runnable_blocks_and_valid_markers() -> None:
    kinds = {block.kind for block in PYTHON}
    assert {"run", "run-as", "file", "skip"} <= kinds
    for block in PYTHON:
        if block.kind in ("skip", "file"):
            assert block.arg, f"{block.label}: a {block.kind} marker needs a reason or a path"
    stray = [
        n + 1
        for n, line in enumerate(README.read_text().splitlines())
        if "readme-test" in line and not MARKER.search(line)
    ]
    assert not stray, f"README lines {stray}: a readme-test comment this test cannot read"


@pytest.mark.parametrize("block", PYTHON, ids=[block.label for block in PYTHON])
def test_block_compiles(block: Block) -> None:
    """Even a skipped fragment is Python (a typo in one is a typo the reader copies)."""
    compile(textwrap.dedent(block.text), block.label, "exec")


@pytest.mark.parametrize(
    "block",
    [block for block in PYTHON if block.kind in ("run", "run-as")],
    ids=lambda block: block.label,
)
def test_block_runs(block: Block, readme: tuple[Path, dict[int, Outcome]]) -> None:
    result = readme[1][block.line].result
    assert result is not None
    assert result.returncode == 0, (
        f"{block.label} does not run as pasted (mark it if it cannot; see this module's "
        f"docstring):\n{result.stderr[-3000:]}"
    )


# -- scenarios: what the quick starts promise, with the quick start's own token --


def token(work: Path) -> str:
    return (work / "make_token.py.out").read_text().strip()


SCENARIO_FASTAPI = """
import sys
from starlette.testclient import TestClient
from main import app

with TestClient(app) as client:
    auth = {"Authorization": "Bearer " + sys.argv[1]}
    print(client.get("/orders", headers=auth).json())
    print(client.get("/orders").status_code, client.get("/health").status_code,
          client.get("/docs").status_code)
"""


def test_quick_start_cli_key_and_token(
    readme: tuple[Path, dict[int, Outcome]], tmp_path: Path
) -> None:
    """The quick start's `jwt-audit keygen` / `jwt-audit token` lines, then main.py."""
    lines = [
        command
        for block in BLOCKS
        if block.lang == "sh"
        for command in _commands(block.text)
        if command.startswith(("jwt-audit keygen", "TOKEN=$(jwt-audit token "))
    ]
    assert [line.split()[0] for line in lines[:2]] == ["jwt-audit", "TOKEN=$(jwt-audit"]
    (tmp_path / "main.py").write_text((readme[0] / "main.py").read_text())
    (tmp_path / "scenario_fastapi.py").write_text(SCENARIO_FASTAPI)
    script = "set -e\n" + "\n".join(lines[:2]) + '\npython scenario_fastapi.py "$TOKEN"\n'
    bin_dir = str(Path(sys.executable).parent)
    result = run(["bash", "-c", script], tmp_path, PATH=bin_dir + os.pathsep + os.environ["PATH"])
    assert result.returncode == 0, result.stderr
    body, statuses = result.stdout.splitlines()[-2:]
    assert body == str({"owner": "alice", "user": "alice"})
    assert statuses == "401 200 200"


SCENARIO_FLASK = """
import sys
from app import app

client = app.test_client()
auth = {"Authorization": "Bearer " + sys.argv[1]}
print(client.get("/orders", headers=auth).get_json())
print(client.get("/orders").status_code, client.get("/health").status_code)
"""


def test_quick_start_fastapi_with_its_token(readme: tuple[Path, dict[int, Outcome]]) -> None:
    work = readme[0]
    (work / "scenario_fastapi.py").write_text(SCENARIO_FASTAPI)
    result = run([sys.executable, "scenario_fastapi.py", token(work)], work)
    assert result.returncode == 0, result.stderr
    body, statuses = result.stdout.splitlines()
    assert body == str({"owner": "alice", "user": "alice"})
    assert statuses == "401 200 200"  # /health and /docs are exempt


def test_quick_start_flask_with_its_token(readme: tuple[Path, dict[int, Outcome]]) -> None:
    work = readme[0]
    (work / "scenario_flask.py").write_text(SCENARIO_FLASK)
    result = run([sys.executable, "scenario_flask.py", token(work)], work)
    assert result.returncode == 0, result.stderr
    body, statuses = result.stdout.splitlines()
    assert body == str({"owner": "alice", "remote_user": "alice"})
    assert statuses == "401 200"


SCENARIO_FLASK_EXT = """
import sys
from flask_ext import app

client = app.test_client()
print(client.get("/orders", headers={"Authorization": "Bearer " + sys.argv[1]}).get_json())
print(client.get("/orders").status_code)
"""


def test_flask_extension_with_its_run_line_variables(
    readme: tuple[Path, dict[int, Outcome]],
) -> None:
    work = readme[0]
    (work / "scenario_flask_ext.py").write_text(SCENARIO_FLASK_EXT)
    result = run(
        [sys.executable, "scenario_flask_ext.py", token(work)],
        work,
        FLASK_JWT_AUDIT_ALGORITHMS="RS256",
        FLASK_JWT_AUDIT_PUBLIC_KEY=(work / "public.pem").read_text(),
        FLASK_JWT_AUDIT_ISSUER="https://idp.example.com/",
        FLASK_JWT_AUDIT_AUDIENCE="orders-api",
    )
    assert result.returncode == 0, result.stderr
    body, status = result.stdout.splitlines()
    assert body == str({"owner": "alice"})
    assert status == "401"


SCENARIO_DJANGO = """
import json, logging, sys
import django
from django.test import Client
from django.test.utils import setup_test_environment

django.setup()
setup_test_environment()                             # ALLOWED_HOSTS gets "testserver"
client = Client(enforce_csrf_checks=True)          # as a real client meets CSRF
auth = {"Authorization": "Bearer " + sys.argv[1]}
print(json.dumps({
    "get": client.get("/orders/", headers=auth).json(),
    "post": client.post("/orders/", headers=auth).json(),
    "anonymous": client.get("/orders/").status_code,
    "no_slash": client.get("/orders", headers=auth).status_code,
    "health": client.get("/health/").status_code,
    "admin": client.get("/admin/").status_code,
    "django_loggers_on": not logging.getLogger("django.request").disabled,
}))
"""


def test_django_snippets_in_a_startproject(readme: tuple[Path, dict[int, Outcome]]) -> None:
    """settings.py (+ LOGGING), views.py and urls.py as pasted; CSRF enforced."""
    work = readme[0]
    env = {
        "JWT_PUBLIC_KEY": (work / "public.pem").read_text(),
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
    }
    check = run([sys.executable, "manage.py", "check"], work, **env)
    assert check.returncode == 0, check.stderr
    (work / "scenario_django.py").write_text(SCENARIO_DJANGO)
    result = run([sys.executable, "scenario_django.py", token(work)], work, **env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "get": {"owner": "alice", "method": "GET"},
        "post": {"owner": "alice", "method": "POST"},  # no CSRF token: csrf_exempt
        "anonymous": 401,
        "no_slash": 301,  # checked, then CommonMiddleware's redirect to /orders/
        "health": 200,
        "admin": 302,  # exempt: Django's admin sends the browser to its login
        "django_loggers_on": True,  # "disable_existing_loggers": False
    }
    events = [json.loads(line) for line in (work / "audit.jsonl").read_text().splitlines()]
    assert [(e["path"], e["status"]) for e in events] == [
        ("/orders/", 200),
        ("/orders/", 200),
        ("/orders/", 401),
        ("/orders", 301),
        ("/health/", 200),
        ("/admin/", 302),
    ]


# -- sh lines that run an example are the example's own Run: line ------------


def _commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [" ".join(line.split("#")[0].split()) for line in joined.splitlines() if line.strip()]


def test_run_lines_are_the_examples_own() -> None:
    docs = " ".join(
        " ".join(re.sub(r"\\\n\s*", " ", path.read_text()).split())
        for path in (ROOT / "examples").rglob("*.py")
    )
    lines = [
        (block.label, command)
        for block in BLOCKS
        if block.lang == "sh"
        for command in _commands(block.text)
        if re.search(r"\bexamples[./]", command)
    ]
    assert lines, "the README runs no example"
    for label, command in lines:
        assert command in docs, f"{label}: {command!r} is no example's Run: line"
