"""The apps ``bench_server_share.py`` serves: where a request's microseconds go inside uvicorn.

Every variant is the same one-route Starlette app, alone (``bare``) or behind one
thing done per request: a calibration row (``stdlib_json``, ``logrecord_only`` ...)
or ``JWTAuditMiddleware`` (``ours``; ``BENCH_NO_HANDLER=1`` leaves out the
``JSONLinesHandler``).  The outermost layer (``_Probe``, the same for all) counts
what the server cannot show by its requests/s alone:

- ``app_ns``: the time spent inside the app per request (the calibration work
  itself, timed where it runs), against which requests/s says what the whole
  process pays;
- the process's CPU time (user + system) per request, which a busy machine's
  other processes do not inflate the way they inflate 1 / requests/s;
- the cyclic GC's collections per generation and the time spent in them
  (``gc.callbacks``).

``GET /__share`` returns those counters as JSON (the driver reads them before and
after a load).  ``SHARE_GC`` chooses the collector's setting at start-up:
``default``; ``freeze`` (``gc.freeze()`` once the app is built and started:
the start-up heap leaves the generations the collector scans); ``disable``;
``t<N>`` (``gc.set_threshold(N)``, gen0 every N net allocations); ``freeze+t<N>``.
Nothing here is imported by the package; only loopback ever serves it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Any, Any], Awaitable[None]]
EVENTS = os.environ.get("BENCH_EVENTS", "/tmp/server-share-events.jsonl")
#: the calibration rows' work() itself, timed where it runs: [nanoseconds, calls,
#: nanoseconds of a second call right after the first (SHARE_REPEAT=1)]
WORK = [0, 0, 0]
REPEAT = bool(os.environ.get("SHARE_REPEAT"))


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def starlette_app(middleware: type | None = None, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/hello", hello)])
    if middleware is not None:
        app.add_middleware(middleware, **options)
    return app


# -- the calibration's rows (as in ../shared/bench/calibration_app.py) -------------------


class _Wrap:
    """A pure ASGI middleware that wraps send and calls work() once per http request."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.buf: list[Any] = []
        self.setup()

    def setup(self) -> None:
        pass

    def work(self, scope: Scope, status: int | None) -> None:
        pass

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen: dict[str, Any] = {}

        async def wrapped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)

        await self.app(scope, receive, wrapped)
        status = seen.get("status")
        start = time.perf_counter_ns()
        self.work(scope, status)
        WORK[0] += time.perf_counter_ns() - start
        WORK[1] += 1
        if REPEAT:  # the same work again at once: its caches are warm now
            start = time.perf_counter_ns()
            self.work(scope, status)
            WORK[2] += time.perf_counter_ns() - start


class Noop(_Wrap):
    """send wrapped, nothing else."""


class DictAppend(_Wrap):
    """a 4-key dict appended to a list (cleared every 256)."""

    def work(self, scope: Scope, status: int | None) -> None:
        self.buf.append(
            {"event": "access", "path": scope["path"], "status": status, "t": time.time()}
        )
        if len(self.buf) >= 256:
            self.buf.clear()


class StdlibJson(_Wrap):
    """the same dict through stdlib json.dumps."""

    def work(self, scope: Scope, status: int | None) -> None:
        event = {"event": "access", "path": scope["path"], "status": status, "t": time.time()}
        self.buf.append(json.dumps(event))
        if len(self.buf) >= 256:
            self.buf.clear()


class StdlibEncoder(_Wrap):
    """the same dict through a prebuilt json.JSONEncoder's c_make_encoder (no iterencode)."""

    def setup(self) -> None:
        from json.encoder import (
            c_make_encoder,
            encode_basestring_ascii,
        )

        assert c_make_encoder is not None
        self.encode = c_make_encoder(
            {}, str, encode_basestring_ascii, None, ":", ",", False, False, True
        )

    def work(self, scope: Scope, status: int | None) -> None:
        event = {"event": "access", "path": scope["path"], "status": status, "t": time.time()}
        self.buf.append("".join(self.encode(event, 0)))
        if len(self.buf) >= 256:
            self.buf.clear()


class Orjson(_Wrap):
    """the same dict through orjson.dumps."""

    def setup(self) -> None:
        import orjson

        self.dumps = orjson.dumps

    def work(self, scope: Scope, status: int | None) -> None:
        event = {"event": "access", "path": scope["path"], "status": status, "t": time.time()}
        self.buf.append(self.dumps(event))
        if len(self.buf) >= 256:
            self.buf.clear()


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.items: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.items.append(record)
        if len(self.items) >= 512:
            self.items.clear()


class LogRecordOnly(_Wrap):
    """one logger.info(extra=) call to a handler that only keeps the record."""

    def setup(self) -> None:
        self.log = logging.getLogger("share.records")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.log.addHandler(_Keep())

    def work(self, scope: Scope, status: int | None) -> None:
        self.log.info("access", extra={"event": {"path": scope["path"], "status": status}})


class RecordNoCaller(LogRecordOnly):
    """the same call with logging._srcfile = None (no findCaller stack walk)."""

    def setup(self) -> None:
        super().setup()
        logging._srcfile = None  # type: ignore[attr-defined]


class FileHandlerLine(_Wrap):
    """one stdlib logging line: json.dumps + logging.FileHandler (what the seeds do)."""

    def setup(self) -> None:
        self.log = logging.getLogger("share.file")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.log.addHandler(logging.FileHandler(EVENTS + ".filehandler"))

    def work(self, scope: Scope, status: int | None) -> None:
        event = {"event": "access", "path": scope["path"], "status": status, "t": time.time()}
        self.log.info(json.dumps(event))


class Garbage(_Wrap):
    """allocates SHARE_GARBAGE (default 300) short-lived lists, no other work."""

    def setup(self) -> None:
        self.count = int(os.environ.get("SHARE_GARBAGE", "300"))

    def work(self, scope: Scope, status: int | None) -> None:
        for _ in range(self.count):
            [None]  # noqa: B018 - a container the collector counts


def _patch(names: str) -> None:
    """SHARE_PATCH: what-if changes of the sink's request path, made here, not in the package.

    ``lean_line``: the line is ``orjson.dumps`` of the event plus level and logger,
    without ``JSONFormatter`` and its value walk (the ceiling of a lean formatter).
    ``defer_format``: the queue keeps the record; the writer thread formats the batch.
    """
    from jwt_audit_middleware.sinks.jsonl import JSONLinesHandler, Lines

    for name in filter(None, names.split("+")):
        if name == "lean_line":
            import orjson

            def lean(
                self: Any, record: logging.LogRecord, dumps: Callable[..., bytes] = orjson.dumps
            ) -> str:
                event = record.__dict__["jwt_audit"]
                line = dumps({**event, "level": record.levelname, "logger": record.name})
                return line.decode() + "\n"

            JSONLinesHandler.enqueued = lean  # type: ignore[method-assign]
        elif name == "defer_format":
            JSONLinesHandler.enqueued = lambda self, record: record  # type: ignore[method-assign]

            def prepare(self: Any, items: list[Any]) -> Any:
                text = "".join([self._json.format(record) + "\n" for record in items])
                return Lines(text.encode("utf-8", "backslashreplace"))

            JSONLinesHandler.prepare = prepare  # type: ignore[method-assign]
        else:
            raise ValueError(f"SHARE_PATCH: unknown {name!r}")


def _ours() -> Starlette:
    """JWTAuditMiddleware (RS256, cache hit); JSONLinesHandler unless BENCH_NO_HANDLER."""
    from jwt_audit_middleware import JWTAuditMiddleware
    from jwt_audit_middleware.sinks import JSONLinesHandler

    _patch(os.environ.get("SHARE_PATCH", ""))
    logger = logging.getLogger("jwt_audit")
    logger.propagate = False
    if not os.environ.get("BENCH_NO_HANDLER"):
        logger.addHandler(JSONLinesHandler(EVENTS))
    if not os.environ.get("SHARE_TIMING"):
        return starlette_app(
            JWTAuditMiddleware, algorithms=["RS256"], public_key=os.environ["BENCH_PUBLIC_KEY"]
        )
    install_timing()
    app = starlette_app(_Inner)  # add_middleware puts each new one outside the last
    app.add_middleware(
        JWTAuditMiddleware, algorithms=["RS256"], public_key=os.environ["BENCH_PUBLIC_KEY"]
    )
    return app


# -- SHARE_TIMING=1: where the middleware's microseconds go, timed where they run ---------

#: name -> [nanoseconds, calls]; a sample over CLIP_NS (the thread lost its core) is left out
TIMING: dict[str, list[int]] = {}
CLIP_NS = 300_000


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    slot = TIMING.setdefault(name, [0, 0])
    clock = time.perf_counter_ns

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return function(*args, **kwargs)
        finally:
            spent = clock() - start
            if spent < CLIP_NS:
                slot[0] += spent
                slot[1] += 1

    return timed


class _Inner:
    """Times the app below the middleware (what the middleware's own time leaves out)."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.slot = TIMING.setdefault("app below the middleware", [0, 0])

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        start = time.perf_counter_ns()
        await self.app(scope, receive, send)
        spent = time.perf_counter_ns() - start
        if spent < CLIP_NS and scope["type"] == "http":
            self.slot[0] += spent
            self.slot[1] += 1


def install_timing() -> None:
    """Wrap the middleware's steps in timers (the package itself is not changed)."""
    from jwt_audit_middleware import asgi, audit, lifecycle, policy, request
    from jwt_audit_middleware.sinks import _worker, jsonl

    steps = [
        (request.RequestReader, "info", "RequestReader.info"),
        (policy.Gate, "decide", "Gate.decide"),
        (lifecycle.Exchange, "__init__", "Exchange() (Lifecycle.begin)"),
        (lifecycle.Lifecycle, "attach", "Lifecycle.attach"),
        (lifecycle.Exchange, "finish", "Exchange.finish (the event)"),
        (audit.AuditLogger, "_emit", "  AuditLogger._emit (record, handlers)"),
        (audit, "make_record", "    make_record"),
        (_worker.BackgroundHandler, "emit", "    BackgroundHandler.emit"),
        (jsonl.JSONLinesHandler, "enqueued", "      JSONLinesHandler.enqueued (the line)"),
    ]
    for owner, attribute, name in steps:
        setattr(owner, attribute, _timed(name, getattr(owner, attribute)))
    original = asgi.JWTAuditMiddleware.__call__

    async def call(self: Any, scope: Scope, receive: Any, send: Any) -> None:
        start = time.perf_counter_ns()
        await original(self, scope, receive, send)
        spent = time.perf_counter_ns() - start
        if spent < CLIP_NS and scope["type"] == "http":
            slot = TIMING.setdefault("JWTAuditMiddleware.__call__ (with the app)", [0, 0])
            slot[0] += spent
            slot[1] += 1

    asgi.JWTAuditMiddleware.__call__ = call  # type: ignore[method-assign]


def _threads() -> dict[str, int]:
    """Nanoseconds on a core, and waiting for one, of the loop thread and of the others."""
    main = other = wait = 0
    me = os.getpid()
    try:
        for task in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{task}/schedstat") as file:
                on_cpu, queued, _ = (int(x) for x in file.read().split())
            if int(task) == me:
                main, wait = on_cpu, queued
            else:
                other += on_cpu
    except OSError:  # not Linux
        pass
    return {"main_ns": main, "other_ns": other, "wait_ns": wait}


# -- the probe: the same outermost layer for every variant -----------------------------


class _Probe:
    """Counts requests, in-app time, CPU time and the collector's work; serves /__share."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.requests = 0
        self.app_ns = 0
        self.gc_ns = [0, 0, 0]
        self.gc_count = [0, 0, 0]
        self._gc_start = 0
        gc.callbacks.append(self._on_gc)
        self._started = False

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter_ns()
        else:
            generation = info["generation"]
            self.gc_count[generation] += 1
            self.gc_ns[generation] += time.perf_counter_ns() - self._gc_start

    def _configure_gc(self) -> None:
        mode = os.environ.get("SHARE_GC", "default")
        for part in mode.split("+"):
            if part == "freeze":
                gc.collect()
                gc.freeze()
            elif part == "disable":
                gc.disable()
            elif part.startswith("t"):
                gc.set_threshold(int(part[1:]), *gc.get_threshold()[1:])
            elif part.startswith("switch"):
                sys.setswitchinterval(float(part[6:]))
            elif part != "default":
                raise ValueError(f"SHARE_GC: unknown part {part!r}")

    def counters(self) -> dict[str, Any]:
        times = os.times()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            **_threads(),
            "minflt": usage.ru_minflt,
            "csw": usage.ru_nvcsw + usage.ru_nivcsw,
            "requests": self.requests,
            "work_ns": WORK[0],
            "work_calls": WORK[1],
            "again_ns": WORK[2],
            "timing": TIMING,
            "app_ns": self.app_ns,
            "cpu_s": times.user + times.system,
            "gc_count": list(self.gc_count),
            "gc_ns": list(self.gc_ns),
            "frozen": gc.get_freeze_count(),
            "tracked": len(gc.get_objects()),
            "threshold": list(gc.get_threshold()),
            "enabled": gc.isenabled(),
        }

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"] != "/__share":
            start = time.thread_time_ns()
            await self.app(scope, receive, send)
            self.app_ns += time.thread_time_ns() - start
            self.requests += 1
            return
        if kind == "http":
            body = json.dumps(self.counters()).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if kind == "lifespan" and not self._started:
            self._started = True
            # the app builds its middleware stack on its first call: do it now,
            # so that what freeze() keeps includes the middleware's own start-up
            app = self.app
            if isinstance(app, Starlette) and app.middleware_stack is None:
                app.middleware_stack = app.build_middleware_stack()
            self._configure_gc()
        await self.app(scope, receive, send)


_FACTORIES: dict[str, Callable[[], ASGI]] = {
    "bare": starlette_app,
    "noop": lambda: starlette_app(Noop),
    "dict_append": lambda: starlette_app(DictAppend),
    "stdlib_json": lambda: starlette_app(StdlibJson),
    "stdlib_encoder": lambda: starlette_app(StdlibEncoder),
    "orjson_dumps": lambda: starlette_app(Orjson),
    "logrecord_only": lambda: starlette_app(LogRecordOnly),
    "record_no_caller": lambda: starlette_app(RecordNoCaller),
    "filehandler_line": lambda: starlette_app(FileHandlerLine),
    "garbage": lambda: starlette_app(Garbage),
    "ours": _ours,
}
VARIANTS = tuple(_FACTORIES)


def __getattr__(name: str) -> ASGI:
    """``server_share_app:<variant>``: the variant's app behind the probe, built on demand."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise AttributeError(name)
    app = _Probe(factory())
    globals()[name] = app
    return app


def run_in_process(name: str, requests: int, token: str) -> dict[str, Any]:
    """The variant's app called directly in one event loop (no server): its counters."""
    import asyncio

    app = __getattr__(name)
    headers = [
        (b"host", b"127.0.0.1"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"user-agent", b"wrk"),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/hello", "raw_path": b"/hello", "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    async def lifespan(started: asyncio.Event) -> None:
        messages = [{"type": "lifespan.startup"}]

        async def lifespan_receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # no shutdown: the task is cancelled
            return {}

        async def lifespan_send(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        await app(lifespan_scope, lifespan_receive, lifespan_send)

    async def run() -> dict[str, Any]:
        started = asyncio.Event()
        server = asyncio.create_task(lifespan(started))
        await started.wait()
        for _ in range(2000):
            await app(dict(scope), receive, send)
        before = json.loads(json.dumps(app.counters()))
        for _ in range(requests):
            await app(dict(scope), receive, send)
        after = app.counters()
        server.cancel()
        return {"before": before, "after": after}

    return asyncio.run(run())


if __name__ == "__main__":
    print(json.dumps(run_in_process(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
