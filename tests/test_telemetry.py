"""OpenTelemetry trace correlation (contract §11) with the real SDK and instrumentation.

The instrumentation packages' own middlewares (``opentelemetry-instrumentation-asgi``
around FastAPI and Starlette, ``-wsgi`` and ``-flask`` around Flask) create the
server span; the SDK's in-memory exporter hands back the finished spans, and the
``trace_id`` / ``span_id`` in our event must be that span's, in the same request.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask, jsonify
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as ASGITracing
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as WSGITracing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from jwt_audit_middleware import AuditLogger, JWTAuditMiddleware, JWTAuditWSGIMiddleware, telemetry
from jwt_audit_middleware.testing import CapturedEvents, SigningKey

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A real SDK provider exporting to memory (not installed globally: passed to each app)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def exporter(tracing: tuple[TracerProvider, InMemorySpanExporter]) -> Iterator[Any]:
    tracing[1].clear()
    yield tracing[1]
    tracing[1].clear()


@pytest.fixture
def provider(tracing: tuple[TracerProvider, InMemorySpanExporter]) -> TracerProvider:
    return tracing[0]


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def assert_correlated(event: dict[str, Any], span: ReadableSpan) -> None:
    trace_id, span_id = ids(span)
    assert (event["trace_id"], event["span_id"]) == (trace_id, span_id)
    assert len(event["trace_id"]) == 32
    assert len(event["span_id"]) == 16


def assert_no_token(span: ReadableSpan, token: str) -> None:
    signature = token.rsplit(".", 1)[-1]
    texts = [str(v) for v in (span.attributes or {}).values()]
    texts += [str(v) for e in span.events for v in (e.attributes or {}).values()]
    assert not any(token in t or signature in t for t in texts)


# -- ASGI: FastAPI and Starlette under opentelemetry-instrumentation-asgi ----------------------


def fastapi_app(key: SigningKey, provider: TracerProvider) -> Any:
    app = FastAPI()

    @app.get("/orders")
    def orders() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(JWTAuditMiddleware, **key.options(exempt_paths=["/metrics"]))
    return ASGITracing(app, tracer_provider=provider)


def starlette_app(key: SigningKey, provider: TracerProvider) -> Any:
    async def orders(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/orders", orders)])
    app.add_middleware(JWTAuditMiddleware, **key.options())
    return ASGITracing(app, tracer_provider=provider)


async def get(app: Any, path: str, authorization: str | None = None) -> int:
    headers = {} if authorization is None else {"authorization": authorization}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(path, headers=headers)
    return response.status_code


@pytest.mark.parametrize("build", [fastapi_app, starlette_app], ids=["fastapi", "starlette"])
def test_asgi_event_carries_the_server_spans_ids(
    build: Any,
    rsa_key: SigningKey,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    events: CapturedEvents,
) -> None:
    app = build(rsa_key, provider)
    token = rsa_key.token()
    assert asyncio.run(get(app, "/orders", f"Bearer {token}")) == 200
    span = server_span(exporter)
    event = events.only()
    assert event["outcome"] == "allowed"
    assert_correlated(event, span)
    assert span.attributes is not None
    assert span.attributes["jwt_audit.outcome"] == "allowed"
    assert span.attributes["jwt_audit.subject"] == "alice"
    assert "jwt_audit.reason" not in span.attributes
    assert not [e for e in span.events if e.name == telemetry.DENIAL_EVENT]
    assert_no_token(span, token)


def assert_denial_span(span: Any, token: str) -> None:
    """The server span of a request denied ``expired``: attributes, the span event, no token."""
    assert span.attributes is not None
    assert span.attributes["jwt_audit.outcome"] == "denied"
    assert span.attributes["jwt_audit.reason"] == "expired"
    assert span.attributes["jwt_audit.subject"] == "alice"  # verified, then expired
    (denial,) = [e for e in span.events if e.name == telemetry.DENIAL_EVENT]
    assert denial.attributes is not None
    assert denial.attributes["jwt_audit.reason"] == "expired"
    assert denial.attributes["http.response.status_code"] == 401
    assert_no_token(span, token)


@pytest.mark.parametrize("build", [fastapi_app, starlette_app], ids=["fastapi", "starlette"])
def test_asgi_denial_carries_the_server_spans_ids_reason_and_span_event(
    build: Any,
    rsa_key: SigningKey,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    events: CapturedEvents,
) -> None:
    app = build(rsa_key, provider)
    expired = rsa_key.token(expires_in=-600)
    assert asyncio.run(get(app, "/orders", f"Bearer {expired}")) == 401
    span = server_span(exporter)
    assert_correlated(events.only(), span)
    assert_denial_span(span, expired)


def test_wsgi_denial_sets_the_reason_and_a_span_event(
    rsa_key: SigningKey,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    events: CapturedEvents,
) -> None:
    app = flask_app(rsa_key)
    app.wsgi_app = WSGITracing(app.wsgi_app, tracer_provider=provider)  # type: ignore[method-assign]
    expired = rsa_key.token(expires_in=-600)
    headers = {"Authorization": f"Bearer {expired}"}
    assert app.test_client().get("/orders", headers=headers, buffered=True).status_code == 401
    span = server_span(exporter)
    assert_correlated(events.only(), span)
    assert_denial_span(span, expired)


def test_two_requests_two_traces(
    rsa_key: SigningKey,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    events: CapturedEvents,
) -> None:
    app = starlette_app(rsa_key, provider)

    async def run() -> None:
        await get(app, "/orders")
        await get(app, "/orders", f"Bearer {rsa_key.token()}")

    asyncio.run(run())
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [(e["trace_id"], e["span_id"]) for e in events] == [ids(s) for s in spans]
    assert len({e["trace_id"] for e in events}) == 2


# -- WSGI: Flask under opentelemetry-instrumentation-wsgi and -flask -------------------------------


def flask_app(key: SigningKey) -> Flask:
    app = Flask(__name__)

    @app.get("/orders")
    def orders() -> Any:
        return jsonify(ok="yes")

    app.wsgi_app = JWTAuditWSGIMiddleware(app.wsgi_app, **key.options())  # type: ignore[method-assign]
    return app


def test_wsgi_event_carries_the_server_spans_ids(
    rsa_key: SigningKey,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    events: CapturedEvents,
) -> None:
    app = flask_app(rsa_key)
    app.wsgi_app = WSGITracing(app.wsgi_app, tracer_provider=provider)  # type: ignore[method-assign]
    client = app.test_client()
    headers = {"Authorization": f"Bearer {rsa_key.token()}"}
    # buffered: the body is read, so the access event (emitted once it is) happens here
    assert client.get("/orders", headers=headers, buffered=True).status_code == 200
    span = server_span(exporter)
    assert_correlated(events.only(), span)
    assert span.attributes is not None
    assert span.attributes["jwt_audit.outcome"] == "allowed"
    exporter.clear()
    events.clear()
    assert client.get("/orders", headers={"Authorization": "Basic eDp5"}).status_code == 401
    span = server_span(exporter)
    assert_correlated(events.only(), span)
    assert span.attributes is not None
    assert span.attributes["jwt_audit.reason"] == "unsupported_scheme"


def test_flask_instrumentor_needs_the_wsgi_middleware_outside(
    rsa_key: SigningKey,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    events: CapturedEvents,
) -> None:
    """``FlaskInstrumentor`` alone: its span lives inside Flask, between our decision and event.

    It starts in ``before_request`` (a denial never gets there) and ends at
    teardown, before the response is sent and our access event emitted: no
    ids.  With the WSGI middleware outermost too, as the README says, every
    event carries the server span's ids, and Flask's span is its child.
    """
    app = flask_app(rsa_key)
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {rsa_key.token()}"}
        assert client.get("/orders", headers=headers, buffered=True).status_code == 200
        assert client.get("/orders", buffered=True).status_code == 401
        assert [("trace_id" in e) for e in events] == [False, False]
        events.clear()
        exporter.clear()
        app.wsgi_app = WSGITracing(app.wsgi_app, tracer_provider=provider)  # type: ignore[method-assign]
        assert client.get("/orders", headers=headers, buffered=True).status_code == 200
        outer = [s for s in exporter.get_finished_spans() if s.parent is None]
        assert len(outer) == 1
        assert_correlated(events.only(), outer[0])
        assert len(exporter.get_finished_spans()) >= 2  # Flask's span, inside
    finally:
        FlaskInstrumentor().uninstrument_app(app)


# -- without a recording span, without OpenTelemetry ----------------------------------------------


def test_no_span_no_fields(rsa_key: SigningKey, events: CapturedEvents) -> None:
    AuditLogger().login_succeeded("bob")
    assert "trace_id" not in events.only()
    assert "span_id" not in events.only()


def test_app_events_inside_a_span_are_correlated_but_do_not_annotate_it(
    provider: TracerProvider, exporter: InMemorySpanExporter, events: CapturedEvents
) -> None:
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("login"):
        AuditLogger().login_failed("mallory", reason="bad_password")
    (span,) = exporter.get_finished_spans()
    assert_correlated(events.only(), span)
    assert not span.attributes  # only request events speak for the request's span


def test_a_broken_span_never_fails_the_request() -> None:
    class Broken:
        def set_attributes(self, attributes: Any) -> None:
            raise RuntimeError("exporter down")

    telemetry.annotate(Broken(), {"event": "denial", "outcome": "denied", "reason": "expired"})  # type: ignore[arg-type]


def test_without_opentelemetry_nothing_is_imported_and_no_fields_appear() -> None:
    code = textwrap.dedent(
        """
        import asyncio, importlib.abc, sys

        class NoOpenTelemetry(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, NoOpenTelemetry())
        from jwt_audit_middleware import JWTAuditMiddleware, telemetry
        from jwt_audit_middleware.testing import asgi_request, capture_events

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware = JWTAuditMiddleware(app, algorithms=["HS256"], secret=b"s" * 32)
        with capture_events() as events:
            asyncio.run(asgi_request(middleware, "/"))
        print(telemetry.CURRENT_SPAN, "trace_id" in events[0],
              any(m.startswith("opentelemetry") for m in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "False", "False"]
