"""Hand-made tokens and one request through either middleware, with every output kept.

Not a ``conftest.py``: a second module of that name would replace
``tests/conftest.py`` in ``sys.modules`` and break the tests that import
``assert_no_secret`` from it.  Pytest puts this folder on ``sys.path`` (rootdir
conftest, no ``__init__.py``), so the tests here import it by name.

``Channel("asgi")`` calls ``JWTAuditMiddleware`` through ``asgi_request`` (a shim
in front sets the raw header list, so a request can carry two ``Authorization``
headers or any bytes); ``Channel("wsgi")`` builds a ``wsgiref`` environ for
``JWTAuditWSGIMiddleware`` (repeated headers joined with ``,``, as gunicorn
does, values as PEP 3333 latin-1 text).  Each request is one ``Outcome``: the
status, the response text, the events and every record formatted by
``JSONFormatter``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.util import setup_testing_defaults

import jwt
from conftest import assert_no_secret

from jwt_audit_middleware import REASONS, JSONFormatter, JWTAuditMiddleware, JWTAuditWSGIMiddleware
from jwt_audit_middleware.testing import SigningKey, asgi_request, capture_events

PATH = "/api/items"
#: a request (middleware built, called, events formatted) takes far less; a hang does not
MAX_SECONDS = 1.0
Header = tuple[str, bytes]


# -- tokens, composed by hand -------------------------------------------------------


def b64(data: bytes | str | dict[str, Any] | list[Any]) -> str:
    """Unpadded base64url of bytes, of UTF-8 text, or of a JSON value."""
    if isinstance(data, (dict, list)):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**more: Any) -> dict[str, Any]:
    """Claims that pass every check (alice, valid for five minutes)."""
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 300, **more}


def sign(key: SigningKey | bytes, alg: str, signing_input: str) -> bytes:
    """The raw JWS signature of ``signing_input`` (HMAC with bytes, else the key's)."""
    if isinstance(key, bytes):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
        return hmac.new(key, signing_input.encode(), digest[alg]).digest()
    algorithm = jwt.get_algorithm_by_name(alg)
    private = key.private
    return bytes(algorithm.sign(signing_input.encode(), private))


def compose(
    header: dict[str, Any] | bytes | str,
    payload: dict[str, Any] | bytes | str,
    signature: bytes | str = b"",
) -> str:
    """``header.payload.signature``: JSON values, raw bytes (encoded) or ready text (str)."""
    parts = []
    for part in (header, payload):
        parts.append(part if isinstance(part, str) else b64(part))
    sig = signature if isinstance(signature, str) else b64(signature)
    return f"{parts[0]}.{parts[1]}.{sig}"


def signed(
    key: SigningKey | bytes,
    header: dict[str, Any] | bytes | str,
    payload: dict[str, Any] | bytes | str,
    alg: str | None = None,
) -> str:
    """A token whose signature verifies over exactly these header and payload texts.

    ``alg`` defaults to the header's (a dict), else to the key's.
    """
    if alg is None:
        alg = str(header["alg"]) if isinstance(header, dict) else str(key.alg)  # type: ignore[union-attr]
    head = compose(header, payload).rsplit(".", 1)[0]
    return f"{head}.{b64(sign(key, alg, head))}"


# -- one request through a middleware ------------------------------------------------


async def ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def ok_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@dataclass
class Outcome:
    """Everything one request produced."""

    status: int
    response_headers: list[tuple[str, str]]
    body: bytes
    events: list[dict[str, Any]]
    json_lines: list[str]
    plain_lines: list[str]
    seconds: float
    record_count: int

    @property
    def event(self) -> dict[str, Any]:
        assert len(self.events) == 1, f"expected exactly one event, got {self.events!r}"
        assert self.record_count == 1, "other records were logged beside the event"
        return self.events[0]

    def response_text(self) -> str:
        head = "\n".join(f"{name}: {value}" for name, value in self.response_headers)
        return head + "\n\n" + self.body.decode("latin-1")

    def texts(self) -> list[str]:
        """Every output as text: response, event (as JSON), JSON lines, plain lines."""
        return [
            self.response_text(),
            *(json.dumps(e, ensure_ascii=False) for e in self.events),
            *self.json_lines,
            *self.plain_lines,
        ]


@dataclass
class Channel:
    """One middleware flavour: ``asgi`` or ``wsgi``."""

    kind: str
    _built: dict[str, Any] = field(default_factory=dict, repr=False)

    def build(self, options: dict[str, Any]) -> Any:
        if self.kind == "asgi":
            return JWTAuditMiddleware(ok_app, **options)
        return JWTAuditWSGIMiddleware(ok_wsgi_app, **options)

    def send(
        self,
        options: dict[str, Any],
        headers: Sequence[Header] = (),
        *,
        path: str = PATH,
        middleware: Any = None,
    ) -> Outcome:
        """One GET through a middleware built from ``options`` (or the one given)."""
        app = middleware if middleware is not None else self.build(options)
        try:
            with capture_events() as captured:
                started = time.perf_counter()
                if self.kind == "asgi":
                    status, response_headers, body = _asgi(app, headers, path)
                else:
                    status, response_headers, body = _wsgi(app, headers, path)
                seconds = time.perf_counter() - started
        finally:
            if middleware is None:
                app.close()
        formatter = JSONFormatter()
        plain = logging.Formatter("%(levelname)s %(name)s %(message)s")
        return Outcome(
            status=status,
            response_headers=response_headers,
            body=body,
            events=list(captured),
            json_lines=[formatter.format(r) for r in captured.records],
            plain_lines=[plain.format(r) for r in captured.records],
            seconds=seconds,
            record_count=len(captured.records),
        )


def _asgi(app: Any, headers: Sequence[Header], path: str) -> tuple[int, list[Any], bytes]:
    raw = [(name.lower().encode("latin-1"), value) for name, value in headers]

    async def with_raw_headers(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app({**scope, "headers": raw}, receive, send)

    response = asyncio.run(asgi_request(with_raw_headers, path))
    assert response.status is not None
    return response.status, list(response.headers.items()), response.body


def _wsgi(app: Any, headers: Sequence[Header], path: str) -> tuple[int, list[Any], bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        # what a server does: the path's bytes as latin-1 text (PEP 3333)
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
    }
    for name, value in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    setup_testing_defaults(environ)
    calls: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, response_headers: list[Any], exc_info: Any = None) -> Any:
        calls.append((status, response_headers))
        return lambda data: None

    iterable = app(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    status, response_headers = calls[-1]
    return int(status[:3]), list(response_headers), body


# -- what every attack test asserts ---------------------------------------------------


def bearer(token: str | bytes) -> list[Header]:
    value = token if isinstance(token, bytes) else token.encode("latin-1")
    return [("Authorization", b"Bearer " + value)]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def assert_no_leak(outcome: Outcome, *secrets: str, known: str = "") -> None:
    """No secret (a token or credentials) in any output, raw or as a decoded JSON string.

    A secret shorter than 16 characters is not checked ("abc" may well appear
    in a response for reasons of its own), nor one found in ``known``, the text
    every response carries anyway (``application/json``, the challenges).
    Tokens also go through ``assert_no_secret`` (signature, signing input) when
    every part is long enough.
    """
    parsed = [json.loads(line) for line in outcome.json_lines]
    strings = [s for e in (*outcome.events, *parsed) for s in _strings(e)]
    for secret in secrets:
        if len(secret) < 16 or secret in known:
            continue
        for text in outcome.texts():
            assert secret not in text
            if "." in secret and all(len(p) >= 16 for p in secret.rsplit(".", 1)):
                assert_no_secret(text, secret)
        for text in strings:
            assert secret not in text
        signature = secret.rsplit(".", 1)[-1]
        if "." in secret and len(signature) >= 16:
            for text in strings:
                assert signature not in text


def assert_one_line_each(outcome: Outcome) -> None:
    """Each formatted record is one parseable line that no log tool would split."""
    for line in outcome.json_lines:
        assert line.splitlines() == [line]
        assert line.isprintable(), ascii(line)
        json.loads(line)
    for line in outcome.plain_lines:
        assert line.splitlines() == [line]
        assert line.isprintable(), ascii(line)


def assert_denied(outcome: Outcome, reason: str, *secrets: str) -> dict[str, Any]:
    """A denial with ``reason`` and its contract status; one event; nothing leaked."""
    status = REASONS[reason].status
    event = outcome.event
    assert (event["reason"], outcome.status) == (reason, status), event["detail"]
    assert event["event"] == "denial"
    assert event["outcome"] == "denied"
    assert event["status"] == status
    assert outcome.body != b"ok"
    assert outcome.seconds < MAX_SECONDS
    assert_one_line_each(outcome)
    assert_no_leak(outcome, *secrets)
    return event


def assert_allowed(outcome: Outcome, *secrets: str) -> dict[str, Any]:
    """The app answered; one access event; nothing leaked."""
    event = outcome.event
    assert (outcome.status, event["reason"]) == (200, None), event.get("detail")
    assert event["event"] == "access"
    assert event["outcome"] == "allowed"
    assert outcome.body == b"ok"
    assert outcome.seconds < MAX_SECONDS
    assert_one_line_each(outcome)
    assert_no_leak(outcome, *secrets)
    return event
