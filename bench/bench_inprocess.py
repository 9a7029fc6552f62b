"""In-process benchmark: our middleware against the peers, in one run.

    python bench/bench_inprocess.py [--batches 5] [--quick]

Every stack is called directly (ASGI ``await app(scope, receive, send)``, WSGI
``app(environ, start_response)``) on the same tokens, after a warm-up; each figure
is the median over several batches of the per-request time minus the same
framework's time without authentication (its "overhead").  The batches of all
stacks of one algorithm are interleaved, so a burst of load on a shared machine
hits them alike and the ratios hold, and each starts after a full garbage
collection, so it pays for its own garbage only.  Our figures include
building and emitting the audit event into a logging handler that queues it,
as the sinks do on the request thread.

The headline row is the product as users run it: the middleware with its events
written by a real ``JSONLinesHandler`` to a file on disk (its writer thread
live); "queue only" is the same with a handler that only keeps the record.  The
same-job peer does the same job by hand: Starlette ``AuthenticationMiddleware``
+ PyJWT plus one JSON audit line per request through stdlib logging to a file
(``json.dumps`` and a ``FileHandler``, what the seeds do).

Peers: Starlette ``AuthenticationMiddleware`` + a PyJWT backend, a FastAPI
``HTTPBearer`` dependency + PyJWT, flask-jwt-extended, DRF + simplejwt (stateless
user), and the crypto floor (the raw ``cryptography`` / ``hmac`` verify).
``Verifier.verify`` is also timed alone on first-seen tokens (fingerprinted as
the gate does): the first-seen target is about our verification's cost.
Install them with ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import gc
import hashlib
import hmac
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from jwt_audit_middleware import JWTAuditMiddleware, JWTAuditWSGIMiddleware, Settings
from jwt_audit_middleware.events import fingerprint_of_digest
from jwt_audit_middleware.sinks import JSONLinesHandler
from jwt_audit_middleware.testing import SigningKey
from jwt_audit_middleware.verifier import Verifier

warnings.simplefilter("ignore")
ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")


# -- the callers ----------------------------------------------------------------


def asgi_caller(app: Any, tokens: list[str]) -> Callable[[int], Awaitable[None]]:
    headers = [[(b"authorization", f"Bearer {t}".encode()), (b"host", b"bench")] for t in tokens]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def run(n: int) -> None:
        count = len(headers)
        for i in range(n):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/r",
                "raw_path": b"/r",
                "root_path": "",
                "query_string": b"",
                "headers": headers[i % count],
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8000),
            }
            await app(scope, receive, send)

    return run


def wsgi_caller(app: Any, tokens: list[str]) -> Callable[[int], None]:
    path = "/r"
    if isinstance(app, tuple):
        app, path = app
    base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "bench",
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    values = [f"Bearer {t}" for t in tokens]

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    def run(n: int) -> None:
        count = len(values)
        for i in range(n):
            environ = dict(base)
            environ["HTTP_AUTHORIZATION"] = values[i % count]
            environ["wsgi.input"] = _EMPTY
            result = app(environ, start_response)
            for _ in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()

    return run


class _Empty:
    def read(self, *args: Any) -> bytes:
        return b""

    def readline(self, *args: Any) -> bytes:
        return b""


_EMPTY = _Empty()


def per_request(
    runs: dict[str, tuple[Callable[[int], Any], int]], batches: int
) -> dict[str, float]:
    """Median µs per request of each ``name: (run, n)``, batches interleaved.

    After a warm-up of each, batch 1 of every run, then batch 2 of every run, and
    so on: a burst of load on a shared machine hits every stack alike, so the
    ratios of one run hold even when its absolute figures move.
    """
    loop = asyncio.new_event_loop()

    def once(run: Callable[[int], Any], count: int) -> float:
        start = time.perf_counter()
        if asyncio.iscoroutinefunction(run):
            loop.run_until_complete(run(count))
        else:
            run(count)
        return (time.perf_counter() - start) / count * 1e6

    for run, n in runs.values():
        once(run, max(50, n // 10))
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(batches):
        for name, (run, n) in runs.items():
            gc.collect()  # each batch pays for its own garbage, not the previous stack's
            figures[name].append(once(run, n))
    loop.close()
    return {name: statistics.median(values) for name, values in figures.items()}


# -- the apps: bare, ours, peers --------------------------------------------------


async def bare_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def bare_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def verify_options(key: SigningKey) -> dict[str, Any]:
    return key.options(cache_size=4096)


def pyjwt_key(key: SigningKey) -> Any:
    """PyJWT's prepared verification key (what a careful peer would pass)."""
    if key.alg.startswith("HS"):
        return key.secret
    return key.private.public_key()


def starlette_apps(key: SigningKey) -> tuple[Any, Any]:
    from starlette.applications import Starlette
    from starlette.authentication import (
        AuthCredentials,
        AuthenticationBackend,
        AuthenticationError,
        SimpleUser,
    )
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    verifying = pyjwt_key(key)

    class Backend(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            _scheme, _, token = conn.headers.get("authorization", "").partition(" ")
            try:
                claims = jwt.decode(token, verifying, algorithms=[key.alg])
            except jwt.InvalidTokenError as exc:
                raise AuthenticationError("invalid token") from exc
            return AuthCredentials(claims.get("scope", "").split()), SimpleUser(claims["sub"])

    async def route(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    routes = [Route("/r", route)]
    plain = Starlette(routes=routes)
    secured = Starlette(
        routes=routes, middleware=[Middleware(AuthenticationMiddleware, backend=Backend())]
    )
    return plain, secured


def same_job_app(key: SigningKey, directory: str) -> Any:
    """Starlette + PyJWT plus one JSON line per request through stdlib logging to a file."""
    import json

    _plain, secured = starlette_apps(key)
    log = logging.getLogger("bench.same_job")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.handlers[:] = [logging.FileHandler(os.path.join(directory, f"same-job-{key.alg}.log"))]

    async def audited(scope: Any, receive: Any, send: Any) -> None:
        status: list[int] = []

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        start = time.perf_counter()
        await secured(scope, receive, send_status)
        user = scope.get("user")
        event = {
            "event": "access" if status and status[0] < 400 else "denial",
            "time": time.time(),
            "method": scope["method"],
            "path": scope["path"],
            "status": status[0] if status else None,
            "duration_ms": (time.perf_counter() - start) * 1000,
            "client_ip": (scope.get("client") or ("-",))[0],
            "subject": getattr(user, "username", None),
        }
        log.info(json.dumps(event))

    return audited


def with_audit_handler(run: Callable[[int], Any], handler: logging.Handler) -> Callable[[int], Any]:
    """``run`` with ``handler`` as the only handler of ``jwt_audit`` for its batch."""
    audit = logging.getLogger("jwt_audit")
    if not asyncio.iscoroutinefunction(run):

        def run_sync(n: int) -> None:
            audit.handlers[:] = [handler]
            run(n)

        return run_sync

    async def run_with(n: int) -> None:
        audit.handlers[:] = [handler]
        await run(n)

    return run_with


def fastapi_apps(key: SigningKey) -> tuple[Any, Any]:
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    verifying = pyjwt_key(key)
    bearer = HTTPBearer()

    def claims(credentials: HTTPAuthorizationCredentials = Depends(bearer)) -> dict[str, Any]:  # noqa: B008
        try:
            return jwt.decode(credentials.credentials, verifying, algorithms=[key.alg])
        except jwt.InvalidTokenError as exc:
            raise HTTPException(401, "invalid token") from exc

    plain, secured = FastAPI(openapi_url=None), FastAPI(openapi_url=None)

    @plain.get("/r")
    def open_route() -> dict[str, str]:
        return {"ok": "yes"}

    @secured.get("/r")
    def closed_route(user: dict[str, Any] = Depends(claims)) -> dict[str, str]:  # noqa: B008
        return {"ok": user["sub"]}

    return plain, secured


def flask_apps(key: SigningKey) -> tuple[Any, Any]:
    from flask import Flask
    from flask_jwt_extended import JWTManager, jwt_required

    plain = Flask("plain")

    @plain.get("/r")
    def open_route() -> str:
        return "ok"

    secured = Flask("secured")
    secured.config.update(
        JWT_ALGORITHM=key.alg, JWT_DECODE_ALGORITHMS=[key.alg], JWT_TOKEN_LOCATION=["headers"]
    )
    if key.alg.startswith("HS"):
        secured.config["JWT_SECRET_KEY"] = key.secret
    else:
        secured.config["JWT_PUBLIC_KEY"] = key.public_pem
        secured.config["JWT_PRIVATE_KEY"] = "unused"
    JWTManager(secured)

    @secured.get("/r")
    @jwt_required()
    def closed_route() -> str:
        return "ok"

    return plain.wsgi_app, secured.wsgi_app


def drf_apps(key: SigningKey) -> tuple[Any, Any] | None:
    """DRF + simplejwt's stateless user; simplejwt does not accept EdDSA."""
    if key.alg == "EdDSA":
        return None
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="bench-only-not-a-secret",
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
            MIDDLEWARE=[],
            DATABASES={},
            REST_FRAMEWORK={"UNAUTHENTICATED_USER": None},
        )
        django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.urls import clear_url_caches, path
    from rest_framework.permissions import AllowAny, IsAuthenticated
    from rest_framework.response import Response
    from rest_framework.views import APIView
    from rest_framework_simplejwt.authentication import JWTStatelessUserAuthentication
    from rest_framework_simplejwt.backends import TokenBackend
    from rest_framework_simplejwt.tokens import AccessToken

    if key.alg.startswith("HS"):
        backend = TokenBackend(key.alg, signing_key=key.secret.decode("latin-1"))
    else:
        from cryptography.hazmat.primitives import serialization

        private = key.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        backend = TokenBackend(key.alg, signing_key=private, verifying_key=key.public_pem or "")

    class Token(AccessToken):
        _token_backend = backend

    class Authentication(JWTStatelessUserAuthentication):
        def get_validated_token(self, raw_token: bytes) -> Any:
            return Token(raw_token)

    class Open(APIView):
        authentication_classes: list[Any] = []
        permission_classes = [AllowAny]

        def get(self, request: Any) -> Response:
            return Response({"ok": True})

    class Closed(APIView):
        authentication_classes = [Authentication]
        permission_classes = [IsAuthenticated]

        def get(self, request: Any) -> Response:
            return Response({"ok": True})

    urlpatterns[:] = [path("r", Open.as_view()), path("s", Closed.as_view())]
    clear_url_caches()
    handler = WSGIHandler()
    return handler, (handler, "/s")


urlpatterns: list[Any] = []


# -- the crypto floor ---------------------------------------------------------


def floor(key: SigningKey, token: str) -> Callable[[int], None]:
    head, payload, signature = token.split(".")
    message = f"{head}.{payload}".encode()
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    if key.alg.startswith("HS"):
        secret = key.secret

        def verify() -> None:
            hmac.compare_digest(hmac.new(secret, message, hashlib.sha256).digest(), raw)

    elif key.alg == "RS256":
        public = key.private.public_key()

        def verify() -> None:
            public.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())

    elif key.alg == "ES256":
        public = key.private.public_key()
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))

        def verify() -> None:
            public.verify(der, message, ec.ECDSA(hashes.SHA256()))

    else:
        public = key.private.public_key()

        def verify() -> None:
            public.verify(raw, message)

    def run(n: int) -> None:
        for _ in range(n):
            verify()

    return run


def verify_first_seen(key: SigningKey, tokens: list[str]) -> Callable[[int], None]:
    """``Verifier.verify`` alone on tokens it has not seen, fingerprinted as the gate does."""
    verify = Verifier(Settings(**key.options())).verify
    sha256 = hashlib.sha256

    def run(n: int) -> None:
        count = len(tokens)
        for i in range(n):
            token = tokens[i % count]
            verify(token, fingerprint_of_digest(sha256(token.encode("ascii")).digest()))

    return run


def pyjwt_decode(key: SigningKey, token: str) -> Callable[[int], None]:
    verifying = pyjwt_key(key)

    def run(n: int) -> None:
        for _ in range(n):
            jwt.decode(token, verifying, algorithms=[key.alg])

    return run


# -- the run --------------------------------------------------------------------


class QueueingHandler(logging.Handler):
    """What a sink does on the request thread: queue the record (bounded).

    The sinks' writer takes the queue a batch (500 records) at a time, so about
    that many records wait at once; holding more would mostly measure the
    garbage collector walking records that a real sink has already written.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queue: collections.deque[logging.LogRecord] = collections.deque(maxlen=512)

    def emit(self, record: logging.LogRecord) -> None:
        self.queue.append(record)

    def handle(self, record: logging.LogRecord) -> bool:  # no lock: deque.append is atomic
        self.queue.append(record)
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer requests per batch")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    audit = logging.getLogger("jwt_audit")
    audit.propagate = False
    audit.setLevel(logging.INFO)
    queueing = QueueingHandler()
    directory = tempfile.mkdtemp(prefix="bench-inprocess-")
    jsonl = JSONLinesHandler(os.path.join(directory, "audit.jsonl"))

    rows: dict[tuple[str, str], dict[str, float | None]] = collections.defaultdict(dict)

    def record(stack: str, scenario: str, alg: str, value: float | None) -> None:
        rows[(stack, scenario)][alg] = value

    for alg in ALGORITHMS:
        key = SigningKey.generate(alg, kid="bench")
        claims = {
            "type": "access",
            "token_type": "access",
            "fresh": False,
            "scope": "read",
            "user_id": "alice",
        }
        valid = key.token(claims, expires_in=3600)
        expired = key.token(claims, expires_in=-3600)
        fresh_count = int(2000 * scale) if alg in ("HS256", "ES256") else int(1000 * scale)
        first_seen = [key.token(claims, expires_in=3600) for _ in range(fresh_count)]
        n_fast = int(20_000 * scale)
        n_peer = int(2000 * scale)
        print(f"measuring {alg} ...", file=sys.stderr)

        ours_a = JWTAuditMiddleware(bare_asgi, **verify_options(key))
        fresh_a = JWTAuditMiddleware(bare_asgi, **key.options(cache_size=0))
        ours_w = JWTAuditWSGIMiddleware(bare_wsgi, **verify_options(key))
        fresh_w = JWTAuditWSGIMiddleware(bare_wsgi, **key.options(cache_size=0))
        runs: dict[str, tuple[Callable[[int], Any], int]] = {
            "floor": (floor(key, valid), n_fast),
            "pyjwt": (pyjwt_decode(key, valid), n_peer),
            "verify first-seen": (verify_first_seen(key, first_seen), len(first_seen)),
            "bare asgi": (asgi_caller(bare_asgi, [valid]), n_fast),
            "asgi hit": (with_audit_handler(asgi_caller(ours_a, [valid]), queueing), n_fast),
            "asgi hit jsonl": (with_audit_handler(asgi_caller(ours_a, [valid]), jsonl), n_fast),
            "asgi first-seen": (
                with_audit_handler(asgi_caller(fresh_a, first_seen), queueing),
                len(first_seen),
            ),
            "asgi denied": (with_audit_handler(asgi_caller(ours_a, [expired]), queueing), n_peer),
            "bare wsgi": (wsgi_caller(bare_wsgi, [valid]), n_fast),
            "wsgi hit": (with_audit_handler(wsgi_caller(ours_w, [valid]), queueing), n_fast),
            "wsgi first-seen": (
                with_audit_handler(wsgi_caller(fresh_w, first_seen), queueing),
                len(first_seen),
            ),
        }
        peers: list[tuple[str, Any, Callable[..., Any]]] = [
            ("Starlette AuthenticationMiddleware+PyJWT", starlette_apps(key), asgi_caller),
            ("FastAPI HTTPBearer+PyJWT", fastapi_apps(key), asgi_caller),
            ("flask-jwt-extended", flask_apps(key), wsgi_caller),
            ("DRF + simplejwt", drf_apps(key), wsgi_caller),
        ]
        same_job = same_job_app(key, directory)
        runs["same-job valid"] = (asgi_caller(same_job, [valid]), n_peer)
        for name, apps, caller in peers:
            if apps is not None:
                plain, secured = apps
                runs[f"{name} plain"] = (caller(plain, [valid]), n_peer)
                runs[f"{name} valid"] = (caller(secured, [valid]), n_peer)
                runs[f"{name} denied"] = (caller(secured, [expired]), n_peer)
        us = per_request(runs, args.batches)

        record("crypto floor (raw verify)", "-", alg, us["floor"])
        record("PyJWT jwt.decode, prepared key", "-", alg, us["pyjwt"])
        record("jwt_audit Verifier.verify", "first-seen", alg, us["verify first-seen"])
        ours = {
            ("jwt_audit ASGI + JSON-lines file", "bare asgi"): {"cache hit": "asgi hit jsonl"},
            ("jwt_audit ASGI", "bare asgi"): {
                "cache hit": "asgi hit",
                "first-seen": "asgi first-seen",
                "denied (exp)": "asgi denied",
            },
            ("jwt_audit WSGI", "bare wsgi"): {
                "cache hit": "wsgi hit",
                "first-seen": "wsgi first-seen",
            },
        }
        for (stack, bare), scenarios in ours.items():
            for scenario, run_name in scenarios.items():
                record(stack, scenario, alg, us[run_name] - us[bare])
        plain_starlette = us["Starlette AuthenticationMiddleware+PyJWT plain"]
        record(SAME_JOB, "valid", alg, us["same-job valid"] - plain_starlette)
        for name, apps, _ in peers:
            for scenario, measured in (("valid", "valid"), ("denied (exp)", "denied")):
                value = None if apps is None else us[f"{name} {measured}"] - us[f"{name} plain"]
                record(name, scenario, alg, value)

    jsonl.close()
    print_table(rows)
    return 0


SAME_JOB = "same job: Starlette+PyJWT + stdlib JSON line to a file"


def cell(value: float | None) -> str:
    return "    n/a" if value is None else f"{value:7.1f}"


def print_table(rows: dict[tuple[str, str], dict[str, float | None]]) -> None:
    print("\nµs per request (overhead over the same stack without auth; median of batches)")
    print(f"python {sys.version.split()[0]}, pyjwt {jwt.__version__}, {os.cpu_count()} cpus\n")
    header = f"{'stack':42} {'scenario':13} " + " ".join(f"{a:>7}" for a in ALGORITHMS)
    print(header)
    print("-" * len(header))
    for (stack, scenario), values in rows.items():
        print(f"{stack:42} {scenario:13} " + " ".join(cell(values.get(a)) for a in ALGORITHMS))

    product = rows[("jwt_audit ASGI + JSON-lines file", "cache hit")]
    queue_only = rows[("jwt_audit ASGI", "cache hit")]
    same_job = rows[(SAME_JOB, "valid")]
    print("\nthe product (JSON-lines file writing, cache hit) against the same-job peer:")
    print(
        "  same-job overhead ÷ ours (target ≥ 5× HS256, ≥ 10× RS256/ES256/EdDSA): "
        + "  ".join(
            f"{a}: {same_job[a] / product[a]:.1f}×"  # type: ignore[operator]
            for a in ALGORITHMS
            if product.get(a) and same_job.get(a) is not None
        )
    )
    print(
        "  what the JSON-lines sink adds ÷ ours queue-only (target ≤ 30%):          "
        + "  ".join(
            f"{a}: {(product[a] - queue_only[a]) / queue_only[a]:.0%}"  # type: ignore[operator]
            for a in ALGORITHMS
            if queue_only.get(a) and product.get(a) is not None
        )
    )
    ours_hit = queue_only
    print(
        "\nratios: peer overhead ÷ our ASGI cache-hit overhead (target ≥ 10× Starlette, ≥ 30× flask-jwt-extended)"
    )
    for name in (
        "Starlette AuthenticationMiddleware+PyJWT",
        "FastAPI HTTPBearer+PyJWT",
        "flask-jwt-extended",
        "DRF + simplejwt",
    ):
        peer = rows[(name, "valid")]
        ratios = [
            None if peer.get(a) is None or not ours_hit.get(a) else peer[a] / ours_hit[a]  # type: ignore[operator]
            for a in ALGORITHMS
        ]
        print(f"  {name:40} " + " ".join("    n/a" if r is None else f"{r:6.1f}×" for r in ratios))

    floor_row = rows[("crypto floor (raw verify)", "-")]
    print("\nfirst-seen ÷ (crypto floor + 10 µs)  (target ≤ 1.5 for RS256 and EdDSA)")
    for label, row in (
        (
            "Verifier.verify (the target: our verification)",
            ("jwt_audit Verifier.verify", "first-seen"),
        ),
        ("whole ASGI request (overhead over no auth)", ("jwt_audit ASGI", "first-seen")),
    ):
        first = rows[row]
        print(
            f"  {label:48} "
            + "  ".join(
                f"{a}: {first[a] / (floor_row[a] + 10):.2f}"  # type: ignore[operator]
                for a in ALGORITHMS
            )
        )


if __name__ == "__main__":
    sys.exit(main())
