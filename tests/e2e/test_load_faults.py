"""Load and faults under real servers on 127.0.0.1 (issue 12): every request, one event.

- Load: a mix of valid and hostile requests (expired, forged, malformed,
  missing and oversized tokens, other schemes, control characters in the user
  agent, odd paths) against uvicorn (Starlette) and gunicorn (Flask, 2
  workers), both writing JSON lines with ``JSONLinesHandler``: no 5xx, each
  kind answered as it should be, one event per request (matched by a unique
  ``X-Request-ID``), and the servers' memory flat.
- PostgreSQL outage: gunicorn with ``SQLAuditHandler``; the database is
  stopped under load and started again, or the server is stopped (SIGTERM)
  while it is down: every event ends up in the table or in the spill file,
  exactly once.
- The JWKS endpoint fails (500s, then hangs) under load: valid tokens keep
  passing on the keys already held, nothing is answered 5xx.
- A full disk under the JSON-lines file: it never holds a broken or repeated
  line, and once there is room again every event is there.

The servers are subprocesses in their own sessions, on free ports, stopped by
pid; the keys are made for the run.  Figures (requests/s, p99 latency, events
stored) go to ``record_property`` (the JUnit XML) and standard output
(``pytest -s`` or ``-rP``), and into every assertion message.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwks_server import JWKSServer
from processes import free_port, stop_process

from jwt_audit_middleware.testing import SigningKey, jwks_document

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs fork()"),
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc"),
]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AUDIENCE = "orders"
START_TIMEOUT = 30.0
IN_CI = os.environ.get("CI", "").lower() == "true"

LOAD_REQUESTS = 20_000  # per server
CONCURRENCY = 32
RSS_GROWTH_LIMIT_KIB = 20 * 1024
CLEAN_EXIT = (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled


# -- servers ---------------------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess (its own session) on 127.0.0.1."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    output: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server's process and its children (gunicorn's workers)."""
        pid = self.process.pid
        children: list[int] = []
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
            children = [int(child) for child in text.split()]
        except OSError:  # no CONFIG_PROC_CHILDREN: look for them
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        stat = (entry / "stat").read_text()
                        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                            children.append(int(entry.name))
        return [pid, *sorted(children)]

    def tail(self) -> str:
        """The end of its output, without the servers' notes on requests they refused."""
        lines = self.output.read_text(errors="replace").splitlines()
        kept = [line for line in lines if "Invalid HTTP request" not in line]
        kept = [line for line in kept if "Invalid request from" not in line]
        return "\n".join(kept)[-3000:]

    def sink_warnings(self) -> int:
        """Lines the sinks logged (``load_apps._common`` gives them a handler)."""
        return self.output.read_text(errors="replace").count("jwt_audit_middleware.sinks:")


def server_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JWT_AUDIT_", "FLASK_", "DJANGO_", "LOAD_", "AUDIT_LOG"))
    }
    env.update(extra, PYTHONPATH=str(ROOT), LOAD_AUDIENCE=AUDIENCE)
    return env


def start_server(kind: str, tmp: Path, env: dict[str, str], name: str = "") -> Server:
    """``uvicorn`` (Starlette, one process, h11 as CI has it) or ``gunicorn`` (Flask, 2 workers).

    uvicorn's HTTP parser is set to h11 (what ``.[test]`` installs), so the
    requests a server refuses before the app are the same everywhere.
    """
    port = free_port()
    name = name or kind
    if kind == "uvicorn":
        argv = [
            str(BIN / "uvicorn"), "tests.e2e.load_apps.starlette_app:app",
            "--http", "h11", "--loop", "asyncio", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--timeout-graceful-shutdown", "10",
        ]  # fmt: skip
    elif kind == "gunicorn":  # threads: keep-alive, and events logged from several at once
        argv = [
            str(BIN / "gunicorn"), "tests.e2e.load_apps.flask_app:app", "--workers", "2",
            "--worker-class", "gthread", "--threads", "4", "--keep-alive", "5",
            "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "20", "--log-level", "warning",
        ]  # fmt: skip
    else:
        raise ValueError(kind)
    output = tmp / f"{name}.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=server_env(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gunicorn's workers go with it
        )
    server = Server(name, process, port, output)
    try:
        wait_ready(server, 2 if kind == "gunicorn" else 0)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_ready(server: Server, workers: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            httpx.get(server.base_url + "/health", timeout=2.0)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        if len(server.pids()) > workers:
            return
        time.sleep(0.1)
    raise AssertionError(f"{server.name} did not start:\n{server.tail()}")


def stop_server(server: Server, timeout: float = 40.0) -> int | None:
    """SIGTERM, as a supervisor stops it; the exit status (None if it had to be killed)."""
    return stop_process(server.process, timeout)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# -- what is sent, and what each kind of request should get ---------------------------


@dataclass(frozen=True, slots=True)
class Planned:
    """One request: what is sent, and what the middleware should answer and log."""

    rid: str
    kind: str
    method: str
    target: str  # the request target, sent as it is
    headers: tuple[tuple[bytes, bytes], ...]
    status: int
    reason: str | None  # the event's reason (None: an access event)
    refusable: bool = False  # the server itself may refuse it (400, before the app: no event)
    raw: bool = False  # bytes an HTTP client will not send: written on a socket


@dataclass
class Tokens:
    """Tokens made for the run, in pools (verifying the same few would only test the cache)."""

    valid: list[str]
    admin: list[str]
    expired: list[str]
    forged: list[str]
    wrong_audience: list[str]
    unknown_kid: list[str]
    oversized: str

    @classmethod
    def make(cls, key: SigningKey, forger: SigningKey, stranger: SigningKey) -> Tokens:
        return cls(
            valid=[key.token(sub=f"user{i}", aud=AUDIENCE) for i in range(256)],
            admin=[key.token(sub=f"admin{i}", aud=AUDIENCE, scope="admin") for i in range(16)],
            expired=[key.token(sub=f"old{i}", aud=AUDIENCE, expires_in=-60) for i in range(32)],
            forged=[
                forger.token(sub="mallory", aud=AUDIENCE, scope="admin", n=i) for i in range(32)
            ],
            wrong_audience=[key.token(sub=f"user{i}", aud="billing") for i in range(16)],
            unknown_kid=[stranger.token(sub="eve", aud=AUDIENCE, n=i) for i in range(16)],
            oversized=key.token(sub="big", aud=AUDIENCE, padding="x" * 5000),
        )


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {token}".encode())


ORDINARY_TARGETS = ("/orders", "/orders/42", "/", "/reports/2026?month=12")
ADMIN_TARGETS = ("/admin", "/admin/")
# (request target, status with a valid token lacking "admin", status with no token)
ODD_TARGETS: tuple[tuple[str, int, int], ...] = (
    ("/%2e%2e/%2e%2e/etc/passwd", 200, 401),
    ("//double//slashes", 200, 401),
    ("/a%00b", 200, 401),
    ("/%E2%80%A8%C2%85", 200, 401),
    ("/" + "x" * 3000, 200, 401),
    ("/caf%C3%A9", 200, 401),
    ("/;params", 200, 401),
    ("/a?q=%0d%0aSet-Cookie:%20x=1", 200, 401),
    ("/%ff%fe", 200, 401),
    ("/HEALTH", 200, 401),
    ("/ADMIN", 200, 401),
    ("/health/", 200, 200),  # exempt
    ("/health/../admin", 403, 401),
    ("/health%2f..%2fadmin", 403, 401),
    ("/admin%2f", 403, 401),
    ("/./admin", 403, 401),
    ("/%61dmin", 403, 401),
)
# user agents every server passes on to the app
HOSTILE_AGENTS = (
    b"a\xc2\x85b",  # U+0085 (NEL) in UTF-8: a line break to str.splitlines
    b"\xe2\x80\xa8sep\xe2\x80\xa9",  # U+2028, U+2029
    b"%0d%0aX-Injected: 1",
    b"line1\\r\\nline2",
    b'{"event": "access", "quote": "\\""}\\',
    b"x" * 2000,
    b"\xff\xfe\xfd",
)
# control characters: uvicorn (h11) passes them on, gunicorn refuses the request
CONTROL_AGENTS = (b"evil\x1b[2J\x07", b"\x7fdel\ttab", b"\x1b]0;title\x07")
# bytes no client library sends: bare CR, LF splitting the header, NUL, VT
RAW_AGENTS = (b"a\rb", b"a\nX-Evil: 1", b"a\r\nX-Evil: 2", b"a\x00b", b"a\x0bb")
MALFORMED = (
    ("Bearer not.a.jwt", 401, "malformed_token"),
    ("Bearer abc", 401, "malformed_token"),
    ("Bearer e30.e30.", 401, "malformed_token"),
    ("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", 401, "algorithm_not_allowed"),
    ("Bearer a b", 400, "invalid_request"),
    ("Bearer", 400, "invalid_request"),
)
BAD_SCHEMES = ("Basic dXNlcjpwYXNz", "Token abc", "Digest username=x", "Negotiate YII=")

LOAD_WEIGHTS = {
    "valid": 30,
    "admin_ok": 3,
    "insufficient_scope": 4,
    "expired": 7,
    "forged": 7,
    "wrong_audience": 3,
    "malformed": 9,
    "missing": 7,
    "oversized": 4,
    "bad_scheme": 5,
    "hostile_agent": 6,
    "control_agent": 2,
    "crlf_raw": 1.5,
    "odd_path": 11.5,
}


def build(
    kind: str, rid: str, rng: random.Random, tokens: Tokens, agent: bytes = b"load-test/1"
) -> Planned:
    """One request of ``kind``."""
    pick = rng.choice
    method = "POST" if rng.random() < 0.2 else "GET"
    target = pick(ORDINARY_TARGETS)
    ident = (b"x-request-id", rid.encode())
    base: tuple[tuple[bytes, bytes], ...] = ((b"user-agent", agent), ident)

    def planned(
        headers: Iterable[tuple[bytes, bytes]],
        status: int,
        reason: str | None,
        **more: Any,
    ) -> Planned:
        return Planned(
            rid,
            kind,
            more.pop("method", method),
            more.pop("target", target),
            (*base, *headers),
            status,
            reason,
            **more,
        )

    valid = bearer(pick(tokens.valid))
    if kind == "valid":
        return planned([valid], 200, None)
    if kind == "admin_ok":
        return planned([bearer(pick(tokens.admin))], 200, None, target=pick(ADMIN_TARGETS))
    if kind == "insufficient_scope":
        return planned([valid], 403, "insufficient_scope", target=pick(ADMIN_TARGETS))
    if kind == "expired":
        return planned([bearer(pick(tokens.expired))], 401, "expired")
    if kind == "forged":
        return planned([bearer(pick(tokens.forged))], 401, "bad_signature")
    if kind == "wrong_audience":
        return planned([bearer(pick(tokens.wrong_audience))], 401, "invalid_audience")
    if kind == "unknown_kid":
        return planned([bearer(pick(tokens.unknown_kid))], 401, "unknown_key")
    if kind == "malformed":
        choice = rng.randrange(len(MALFORMED) + 2)
        if choice == len(MALFORMED):  # a valid token's signature scrambled (still base64url)
            token = pick(tokens.valid)
            tampered = token[:-17] + token[-17:-1][::-1] + token[-1]
            return planned([bearer(tampered)], 401, "bad_signature")
        if choice == len(MALFORMED) + 1:  # two Authorization headers
            return planned([valid, valid], 400, "invalid_request")
        header, status, reason = MALFORMED[choice]
        return planned([(b"authorization", header.encode())], status, reason)
    if kind == "missing":
        return planned([], 401, "missing_token")
    if kind == "oversized":
        token = tokens.oversized if rng.random() < 0.5 else "A" * 6000
        return planned([bearer(token)], 401, "token_too_large")
    if kind == "bad_scheme":
        if rng.random() < 0.2:  # the scheme is case-insensitive (RFC 7235)
            return planned([(b"authorization", b"bearer " + valid[1][7:])], 200, None)
        return planned([(b"authorization", pick(BAD_SCHEMES).encode())], 401, "unsupported_scheme")
    if kind == "hostile_agent":
        return replace(build("valid", rid, rng, tokens, pick(HOSTILE_AGENTS)), kind=kind)
    if kind == "control_agent":
        request = build("valid", rid, rng, tokens, pick(CONTROL_AGENTS))
        return replace(request, kind=kind, refusable=True)
    if kind == "crlf_raw":
        request = build("valid", rid, rng, tokens, pick(RAW_AGENTS))
        return replace(request, kind=kind, refusable=True, raw=True)
    if kind == "odd_path":
        odd, with_token, without = pick(ODD_TARGETS)
        if rng.random() < 0.7:
            return planned([valid], with_token, _reason(with_token), target=odd, method="GET")
        return planned([], without, _reason(without, "missing_token"), target=odd, method="GET")
    raise ValueError(kind)


def _reason(status: int, unauthorised: str = "invalid_token") -> str | None:
    return {200: None, 401: unauthorised, 403: "insufficient_scope"}[status]


def stream(prefix: str, tokens: Tokens, weights: dict[str, float], seed: int) -> Iterator[Planned]:
    """Requests of the kinds in ``weights``, each with its own ``X-Request-ID``."""
    rng = random.Random(seed)
    kinds = list(weights)
    cumulative = list(itertools.accumulate(weights[k] for k in kinds))
    for n in itertools.count():
        kind = rng.choices(kinds, cum_weights=cumulative)[0]
        yield build(kind, f"{prefix}-{n:06d}", rng, tokens)


# -- the load generator -------------------------------------------------------------


@dataclass
class Outcome:
    status: int | None  # None: no answer (the error says why)
    latency: float
    error: str | None = None


@dataclass
class Run:
    """What a load run sent and got back."""

    sent: dict[str, Planned] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.outcomes) / self.elapsed if self.elapsed else 0.0

    def p99_ms(self, kinds: Sequence[str] | None = None) -> float:
        latencies = sorted(
            o.latency
            for rid, o in self.outcomes.items()
            if kinds is None or self.sent[rid].kind in kinds
        )
        if not latencies:
            return 0.0
        return 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


async def send_raw(port: int, request: Planned) -> int:
    """Write the request as it is on a new connection; the status of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{request.method} {request.target} HTTP/1.1".encode(), b"host: 127.0.0.1"]
        lines += [name + b": " + value for name, value in request.headers]
        lines += [b"connection: close", b"content-length: 0"]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return int(answer.split(b" ", 2)[1])


async def drive(
    base_url: str,
    requests: Iterable[Planned],
    *,
    stop: asyncio.Event | None = None,
    progress: Callable[[int], None] | None = None,
    concurrency: int = CONCURRENCY,
    pause: float = 0.0,
) -> Run:
    """Send ``requests``, ``concurrency`` at a time, until they run out or ``stop`` is set.

    Each of the ``concurrency`` senders has its own client with one keep-alive
    connection: a shared pool of 32 costs the client several times the
    server's work per request (httpcore scans every pooled connection for
    each request), and the client would measure itself.
    """
    run = Run()
    port = int(base_url.rsplit(":", 1)[1])
    source = iter(requests)

    async def sender(client: httpx.AsyncClient) -> None:
        for request in source:
            if stop is not None and stop.is_set():
                return
            run.sent[request.rid] = request
            started = time.perf_counter()
            try:
                if request.raw:
                    status = await send_raw(port, request)
                else:
                    response = await client.request(
                        request.method,
                        "/",
                        headers=list(request.headers),
                        content=b'{"n": 1}' if request.method == "POST" else None,
                        extensions={"target": request.target.encode()},
                    )
                    status = response.status_code
                outcome = Outcome(status, time.perf_counter() - started)
            except (httpx.HTTPError, OSError, asyncio.TimeoutError, ValueError, IndexError) as exc:
                outcome = Outcome(None, time.perf_counter() - started, repr(exc))
            run.outcomes[request.rid] = outcome
            if progress is not None:
                progress(len(run.outcomes))
            if pause:
                await asyncio.sleep(pause)

    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = httpx.create_ssl_context()  # never used (http://), but each client would load one
    with fast_failing_sniffio():
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=base_url, limits=one, timeout=20.0, verify=tls)
                )
                for _ in range(concurrency)
            ]
            started = time.perf_counter()
            await asyncio.gather(*(sender(client) for client in clients))
            run.elapsed = time.perf_counter() - started
    return run


@contextlib.contextmanager
def fast_failing_sniffio() -> Iterator[None]:
    """Without sniffio installed, httpcore searches sys.path for it at every request.

    A ``None`` in ``sys.modules`` makes that import fail at once, as it would
    anyway; it is only set when sniffio is missing, and taken out after.
    """
    try:
        import sniffio  # noqa: F401
    except ImportError:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
        try:
            yield
        finally:
            if sys.modules.get("sniffio", 0) is None:
                del sys.modules["sniffio"]
    else:
        yield


# -- what was stored ----------------------------------------------------------------


def read_jsonl(data: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of a JSON-lines file's bytes, and its broken lines (split on LF only)."""
    events: list[dict[str, Any]] = []
    broken: list[str] = []
    pieces = data.split(b"\n")
    if pieces[-1]:
        broken.append(f"no newline at the end: {pieces[-1][:120]!r}")
    for piece in pieces[:-1]:
        try:
            event = json.loads(piece)
            if not isinstance(event, dict):
                raise TypeError(type(event).__name__)
        except (ValueError, TypeError):
            broken.append(repr(piece[:120]))
        else:
            events.append(event)
    return events, broken


@dataclass
class Verdict:
    """How a run's answers and stored events compare with what each request should get."""

    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    answered_by_app: int = 0
    refused_by_server: int = 0
    stored: int = 0

    def problem(self, kind: str, detail: str) -> None:
        self.problems[kind] += 1
        self.examples.setdefault(kind, detail)

    def __str__(self) -> str:
        lines = [
            f"{count} x {kind}, e.g. {self.examples[kind]}" for kind, count in self.problems.items()
        ]
        return "\n".join(lines) or "no problems"


def judge(run: Run, events: Iterable[dict[str, Any]], prefix: str) -> Verdict:
    """Each request answered as its kind should be, and its event stored exactly once."""
    verdict = Verdict()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        rid = event.get("request_id")
        if isinstance(rid, str) and rid.startswith(prefix + "-"):
            by_id.setdefault(rid, []).append(event)
            if rid not in run.outcomes:
                verdict.problem("event for a request never answered", rid)
    for rid, outcome in run.outcomes.items():
        request = run.sent[rid]
        stored = by_id.get(rid, [])
        verdict.stored += len(stored)
        where = f"{rid} ({request.kind} {request.method} {request.target[:60]!r})"
        if outcome.status is None:
            verdict.problem("no answer", f"{where}: {outcome.error}")
            continue
        if outcome.status >= 500:
            verdict.problem("5xx", f"{where}: {outcome.status}")
        if request.refusable and outcome.status == 400 and not stored:
            verdict.refused_by_server += 1
            continue
        verdict.answered_by_app += 1
        if outcome.status != request.status:
            verdict.problem(
                f"{request.kind}: wrong status", f"{where}: {outcome.status} != {request.status}"
            )
        if not stored:
            verdict.problem("event lost", where)
            continue
        if len(stored) > 1:
            verdict.problem("event stored twice", f"{where}: {len(stored)} times")
        event = stored[0]
        if (event.get("status"), event.get("reason")) != (outcome.status, request.reason):
            verdict.problem(
                f"{request.kind}: wrong event",
                f"{where}: {event.get('status')} {event.get('reason')}, answered "
                f"{outcome.status}, expected reason {request.reason}",
            )
    return verdict


def report(record_property: Callable[[str, object], None], label: str, **figures: object) -> str:
    text = f"{label}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    for name, value in figures.items():
        record_property(f"{label}.{name}", value)
    print(text)
    return text


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate("RS256", kid="load-1")  # made for this run


@pytest.fixture(scope="module")
def tokens(key: SigningKey) -> Tokens:
    forger = SigningKey.generate("RS256", kid="load-1")
    stranger = SigningKey.generate("RS256", kid="stranger")
    return Tokens.make(key, forger, stranger)


def prefix_for(label: str) -> str:
    return f"{label}.{uuid.uuid4().hex[:8]}"


# -- 1. load --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_load_one_event_per_request_and_flat_memory(
    kind: str,
    key: SigningKey,
    tokens: Tokens,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    audit_log = tmp_path / "audit.jsonl"
    env = {
        "LOAD_SINK": "jsonl",
        "AUDIT_LOG": str(audit_log),
        "LOAD_PUBLIC_KEY": key.public_pem or "",
    }
    prefix = prefix_for(f"load-{kind}")
    requests = itertools.islice(stream(prefix, tokens, LOAD_WEIGHTS, seed=12), LOAD_REQUESTS)
    server = start_server(kind, tmp_path, env)
    samples: dict[str, dict[int, int]] = {}

    def sample(done: int) -> None:
        if done == LOAD_REQUESTS // 4 and "25%" not in samples:
            samples["25%"] = {pid: rss_kib(pid) for pid in server.pids()}

    try:
        run = asyncio.run(drive(server.base_url, requests, progress=sample))
        samples["100%"] = {pid: rss_kib(pid) for pid in server.pids()}
    finally:
        exit_status = stop_server(server)
    events, broken = read_jsonl(audit_log.read_bytes())
    verdict = judge(run, events, prefix)
    growth = {pid: samples["100%"].get(pid, 0) - rss for pid, rss in samples["25%"].items()}
    summary = report(
        record_property,
        f"load-{kind}",
        requests=len(run.outcomes),
        requests_per_s=round(run.rate),
        p99_ms=round(run.p99_ms(), 1),
        events_stored=verdict.stored,
        answered_by_app=verdict.answered_by_app,
        refused_by_server=verdict.refused_by_server,
        rss_kib_25=samples["25%"],
        rss_growth_kib=growth,
    )
    assert exit_status in CLEAN_EXIT, f"{summary}\n{server.tail()}"
    assert len(run.outcomes) == LOAD_REQUESTS, summary
    assert not broken, f"{summary}\nbroken lines: {broken[:5]}"
    assert not verdict.problems, f"{summary}\n{verdict}"
    assert verdict.stored == verdict.answered_by_app, summary
    assert set(samples["100%"]) == set(samples["25%"]), f"{summary}: a process was replaced"
    assert max(growth.values()) < RSS_GROWTH_LIMIT_KIB, f"{summary}: memory grew"
    # every kind was sent, and each hostile user agent reached the file as one safe line
    assert set(Counter(r.kind for r in run.sent.values())) == set(LOAD_WEIGHTS), summary
    agents = {e.get("user_agent") for e in events}
    assert not any(ch in str(agent) for agent in agents for ch in "\r\n\x85\u2028"), summary


# -- 2. PostgreSQL outage -----------------------------------------------------------


def pg_ctl(action: str) -> int:
    """``$JWTAUDIT_TEST_POSTGRES_CTL <action>``: its exit status (``status``: 0 if running)."""
    command = os.environ["JWTAUDIT_TEST_POSTGRES_CTL"]
    argv = [*shlex.split(command), action]
    return subprocess.run(argv, check=False, timeout=120, capture_output=True).returncode


def pg_stop() -> None:
    if pg_ctl("stop") != 0 and pg_ctl("status") == 0:
        raise AssertionError("PostgreSQL did not stop")


def ensure_pg_running(timeout: float = 60.0) -> None:
    """Start PostgreSQL unless it runs; a start racing another's is tried again."""
    deadline = time.monotonic() + timeout
    while pg_ctl("status") != 0:
        if pg_ctl("start") == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError("PostgreSQL does not start")
        time.sleep(0.5)


@pytest.fixture
def postgres() -> Iterator[tuple[str, str]]:
    """The test database's URL and a fresh table name; the tables are dropped after."""
    url = os.environ.get("JWTAUDIT_TEST_POSTGRES_URL")
    if not url or not os.environ.get("JWTAUDIT_TEST_POSTGRES_CTL"):
        if IN_CI:
            pytest.fail("JWTAUDIT_TEST_POSTGRES_URL / _CTL are not set")
        pytest.skip("JWTAUDIT_TEST_POSTGRES_URL / _CTL not set (run .ci/services.sh)")
    ensure_pg_running()
    table = "load_" + uuid.uuid4().hex[:12]
    yield url, table
    ensure_pg_running()

    def drop(db: Any) -> None:
        db.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        db.exec_driver_sql(f"DROP TABLE IF EXISTS {table}_schema")

    in_database(url, drop)


def in_database(url: str, action: Callable[[Any], Any], timeout: float = 60.0) -> Any:
    """``action(connection)`` in a transaction, waiting for the database if it is down.

    The database is shared: another test may have stopped it for a moment.
    """
    import sqlalchemy as sa

    deadline = time.monotonic() + timeout
    while True:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as db:
                return action(db)
        except sa.exc.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            engine.dispose()


def stored_rows(url: str, table: str) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    def read(db: Any) -> list[dict[str, Any]]:
        if not sa.inspect(db).has_table(table):
            return []
        rows = db.exec_driver_sql(f"SELECT request_id, status, reason FROM {table}")
        return [dict(row._mapping) for row in rows]

    result: list[dict[str, Any]] = in_database(url, read)
    return result


async def until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


Script = Callable[[list[int]], Awaitable[None]]


async def with_faults(
    base_url: str, requests: Iterable[Planned], script: Script, **options: Any
) -> Run:
    """Drive ``requests`` while ``script`` breaks things, until it returns.

    The script gets a one-item list: how many requests have been answered so far.
    """
    stop = asyncio.Event()
    done = [0]

    def progress(count: int) -> None:
        done[0] = count

    running = asyncio.ensure_future(
        drive(base_url, requests, stop=stop, progress=progress, **options)
    )
    try:
        await script(done)
    finally:
        stop.set()
        run = await running
    return run


@pytest.mark.parametrize("scenario", ["restart", "sigterm"])
def test_postgres_outage_every_event_stored_or_spilled_once(
    scenario: str,
    key: SigningKey,
    tokens: Tokens,
    tmp_path: Path,
    postgres: tuple[str, str],
    record_property: Callable[[str, object], None],
) -> None:
    url, table = postgres
    spill = tmp_path / "spill.jsonl"  # spill_path given: the test reads it
    env = {
        "LOAD_SINK": "sql",
        "LOAD_SQL_URL": url,
        "LOAD_SQL_TABLE": table,
        "LOAD_SPILL_PATH": str(spill),
        "LOAD_SQL_QUEUE": "300",  # fills within the outage: some events spill
        # far shorter than the writer's pauses between attempts: see outage()
        "LOAD_SQL_CLOSE_TIMEOUT": "1",
        "LOAD_SQL_MAX_RETRY_DELAY": "5" if scenario == "restart" else "30",
        "LOAD_PUBLIC_KEY": key.public_pem or "",
    }
    prefix = prefix_for(f"pg-{scenario}")
    requests = stream(prefix, tokens, LOAD_WEIGHTS, seed=2)
    timeline: dict[str, float] = {}

    async def outage(done: list[int]) -> None:
        await until(lambda: done[0] >= 1500, 60)
        timeline["stopped_at"] = done[0]
        await asyncio.to_thread(pg_stop)
        timeline["down_at"] = done[0]
        if scenario == "restart":
            await asyncio.sleep(4.0)
            timeline["start_at"] = done[0]
            await asyncio.to_thread(ensure_pg_running)
            timeline["up_at"] = done[0]
            await asyncio.sleep(2.0)
            return
        # SIGTERM 12 s into the outage.  The writer's pauses between attempts have
        # grown by then (0.05 s doubling, up to max_retry_delay = 30 s here): it is
        # likely asleep with a batch in hand when close() (close_timeout 1 s) gives
        # up on the database.  Issue 12, finding 2: before b1c3c47 that batch was
        # lost (64 events in one run); the unit test in test_sinks_faults.py pins
        # the race down, this checks the whole path (gunicorn, SIGTERM, atexit).
        down = time.monotonic()
        await asyncio.sleep(12.0)
        timeline["sigterm_after_s"] = round(time.monotonic() - down, 1)
        timeline["sigterm_at"] = done[0]

    server = start_server("gunicorn", tmp_path, env, name=f"pg-{scenario}")
    try:
        try:
            run = asyncio.run(with_faults(server.base_url, requests, outage))
            if scenario == "restart":  # the backlog goes in once the database is back
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    spilled = read_jsonl(spill.read_bytes())[0] if spill.exists() else []
                    stored = judge(run, [*stored_rows(url, table), *spilled], prefix)
                    if not stored.problems["event lost"]:
                        break
                    time.sleep(0.5)
        finally:
            stopping = time.monotonic()
            exit_status = stop_server(server)  # in "sigterm": while the database is down
            timeline["stop_seconds"] = round(time.monotonic() - stopping, 1)
    finally:
        ensure_pg_running()
    rows = stored_rows(url, table)
    spilled_events, broken = read_jsonl(spill.read_bytes()) if spill.exists() else ([], [])
    verdict = judge(run, [*rows, *spilled_events], prefix)
    summary = report(
        record_property,
        f"pg-{scenario}",
        requests=len(run.outcomes),
        requests_per_s=round(run.rate),
        p99_ms=round(run.p99_ms(), 1),
        stored_in_table=len([r for r in rows if str(r["request_id"]).startswith(prefix)]),
        spilled=len(spilled_events),
        events=verdict.stored,
        timeline=timeline,
    )
    assert exit_status in CLEAN_EXIT, f"{summary}\n{server.tail()}"
    assert not broken, f"{summary}\nbroken spill lines: {broken[:5]}"
    assert not verdict.problems, f"{summary}\n{verdict}\n{server.tail()}"
    assert verdict.stored == verdict.answered_by_app, summary
    assert rows, f"{summary}: nothing reached the table"
    assert spilled_events, f"{summary}: the outage never filled the queue (nothing spilled)"


# -- 3. the JWKS endpoint fails under load --------------------------------------------


JWKS_WEIGHTS = {
    "valid": 70,
    "forged": 8,
    "unknown_kid": 6,
    "expired": 5,
    "missing": 5,
    "malformed": 6,
}


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_jwks_failing_mid_load_stale_keys_serve(
    kind: str,
    key: SigningKey,
    tokens: Tokens,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    idp = JWKSServer(jwks_document(key))
    audit_log = tmp_path / "audit.jsonl"
    env = {
        "LOAD_SINK": "jsonl",
        "AUDIT_LOG": str(audit_log),
        "LOAD_JWKS_URL": idp.url,
        "LOAD_JWKS_CACHE_SECONDS": "2",  # refreshes come due while it fails
        "LOAD_JWKS_TIMEOUT": "0.5",
        "LOAD_JWKS_MIN_REFRESH": "1",
    }
    prefix = prefix_for(f"jwks-{kind}")
    requests = stream(prefix, tokens, JWKS_WEIGHTS, seed=3)
    hits: dict[str, int] = {}

    async def failing(done: list[int]) -> None:
        await asyncio.sleep(1.5)
        for mode, seconds in (("500", 3.5), ("hang", 3.5), ("ok", 1.5)):
            before = idp.hits
            idp.set(mode)
            await asyncio.sleep(seconds)
            hits[mode] = idp.hits - before

    try:
        server = start_server(kind, tmp_path, env, name=f"jwks-{kind}")
        try:
            run = asyncio.run(with_faults(server.base_url, requests, failing))
        finally:
            exit_status = stop_server(server)
    finally:
        idp.close()
    events, broken = read_jsonl(audit_log.read_bytes())
    verdict = judge(run, events, prefix)
    key_events = Counter(e.get("outcome") for e in events if e.get("event") == "key_event")
    valid = [o for rid, o in run.outcomes.items() if run.sent[rid].kind == "valid"]
    summary = report(
        record_property,
        f"jwks-{kind}",
        requests=len(run.outcomes),
        requests_per_s=round(run.rate),
        p99_ms=round(run.p99_ms(), 1),
        p99_valid_ms=round(run.p99_ms(["valid"]), 1),
        valid_ok=sum(o.status == 200 for o in valid),
        valid=len(valid),
        events_stored=verdict.stored,
        jwks_hits=hits,
        key_events=dict(key_events),
    )
    assert exit_status in CLEAN_EXIT, f"{summary}\n{server.tail()}"
    assert not broken, f"{summary}\nbroken lines: {broken[:5]}"
    assert not verdict.problems, f"{summary}\n{verdict}"
    assert all(o.status == 200 for o in valid), summary
    assert hits["500"], f"{summary}: no fetch came while the endpoint answered 500"
    assert hits["hang"], f"{summary}: no fetch came while the endpoint hung"
    assert key_events["fetch_failed"], summary
    assert key_events["serving_stale"], summary


# -- 4. a full disk -----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace')}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def free_bytes(path: Path) -> int:
    state = os.statvfs(path)
    return state.f_bavail * state.f_frsize


def test_full_disk_never_breaks_or_repeats_a_line(
    key: SigningKey,
    tokens: Tokens,
    tmp_path: Path,
    small_disk: Path,
    record_property: Callable[[str, object], None],
) -> None:
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (200 * 1024))  # room for ~100 events; freed later
    audit_log = small_disk / "audit.jsonl"
    env = {
        "LOAD_SINK": "jsonl",
        "AUDIT_LOG": str(audit_log),
        "LOAD_PUBLIC_KEY": key.public_pem or "",
    }
    prefix = prefix_for("disk")
    requests = stream(prefix, tokens, LOAD_WEIGHTS, seed=4)
    checks: dict[str, object] = {}
    snapshots: list[bytes] = []

    async def fill_then_free(done: list[int]) -> None:
        deadline = time.monotonic() + 60
        while free_bytes(small_disk) > 0:  # until the disk is full
            assert time.monotonic() < deadline, "the disk never filled"
            await asyncio.sleep(0.1)
        checks["full_at"] = done[0]
        await asyncio.sleep(1.5)  # keep sending while there is no room
        snapshots.append(audit_log.read_bytes())
        await asyncio.sleep(1.5)
        snapshots.append(audit_log.read_bytes())
        checks["freed_at"] = done[0]
        ballast.unlink()
        await asyncio.sleep(1.5)

    server = start_server("uvicorn", tmp_path, env, name="disk")
    try:
        # ~30 requests/s: what queues while the disk is full fits in the room freed
        run = asyncio.run(
            with_faults(server.base_url, requests, fill_then_free, concurrency=3, pause=0.1)
        )
        deadline = time.monotonic() + 20  # the writer's backoff is up to 5 s
        while time.monotonic() < deadline:
            if not judge(run, read_jsonl(audit_log.read_bytes())[0], prefix).problems:
                break
            time.sleep(0.2)
    finally:
        exit_status = stop_server(server)
    data = audit_log.read_bytes()
    events, broken = read_jsonl(data)
    ids = Counter(e.get("request_id") for e in events)
    repeated = {rid: n for rid, n in ids.items() if n > 1}
    verdict = judge(run, events, prefix)
    snapshot_problems = []
    for snapshot in snapshots:
        cut = snapshot[: snapshot.rfind(b"\n") + 1]  # a write may be under way at its end
        seen, bad = read_jsonl(cut)
        counts = Counter(e.get("request_id") for e in seen)
        snapshot_problems += bad + [rid for rid, n in counts.items() if n > 1]
    summary = report(
        record_property,
        "full-disk",
        requests=len(run.outcomes),
        lines=data.count(b"\n"),
        events_stored=verdict.stored,
        broken_lines=len(broken),
        repeated_ids=len(repeated),
        checks=checks,
        sink_warnings=server.sink_warnings(),
    )
    assert exit_status in CLEAN_EXIT, f"{summary}\n{server.tail()}"
    assert not snapshot_problems, f"{summary}\nwhile full: {snapshot_problems[:5]}"
    assert not broken, f"{summary}\nbroken lines: {broken[:5]}"
    assert not repeated, f"{summary}\nrepeated: {list(repeated.items())[:5]}"
    assert not verdict.problems, f"{summary}\n{verdict}\n{server.tail()}"
