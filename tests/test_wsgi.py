"""Protocol tests for ``JWTAuditWSGIMiddleware`` around a bare PEP 3333 app.

Every request is a ``wsgiref`` environ handed straight to the middleware with a
recording ``start_response``, and the response iterable is driven the way a
server drives it: iterate, then ``close()``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.util import setup_testing_defaults

import jwt
import pytest
from conftest import assert_no_secret
from cryptography.hazmat.primitives import serialization

from jwt_audit_middleware import REASONS, JWTAuditWSGIMiddleware, VerifiedToken, get_claims
from jwt_audit_middleware.testing import CapturedEvents, SigningKey, jwks_document

ISSUER = "https://idp.example"
AUDIENCE = "api"
PEER = "192.0.2.10"
TIME_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
GENERATED_ID = re.compile(r"[0-9a-f]{32}")

# reason -> (status line, RFC 6750 error or None), from contract §5
CONTRACT: dict[str, tuple[str, str | None]] = {
    "missing_token": ("401 Unauthorized", None),
    "unsupported_scheme": ("401 Unauthorized", None),
    "invalid_request": ("400 Bad Request", "invalid_request"),
    "token_too_large": ("401 Unauthorized", "invalid_token"),
    "malformed_token": ("401 Unauthorized", "invalid_token"),
    "algorithm_not_allowed": ("401 Unauthorized", "invalid_token"),
    "unknown_key": ("401 Unauthorized", "invalid_token"),
    "bad_signature": ("401 Unauthorized", "invalid_token"),
    "expired": ("401 Unauthorized", "invalid_token"),
    "not_yet_valid": ("401 Unauthorized", "invalid_token"),
    "invalid_issuer": ("401 Unauthorized", "invalid_token"),
    "invalid_audience": ("401 Unauthorized", "invalid_token"),
    "missing_claim": ("401 Unauthorized", "invalid_token"),
    "invalid_type": ("401 Unauthorized", "invalid_token"),
    "revoked": ("401 Unauthorized", "invalid_token"),
    "insufficient_scope": ("403 Forbidden", "insufficient_scope"),
    "internal_error": ("500 Internal Server Error", None),
}


# -- a bare PEP 3333 app, and the server side of the protocol -----------------


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Answers with what the middleware left in the environ."""
    token = environ.get("jwt_audit", "absent")
    payload = {
        "app": True,
        "remote_user": environ.get("REMOTE_USER"),
        "claims": get_claims(environ),
        "token": type(token).__name__,
    }
    body = json.dumps(payload).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


@dataclass
class Recorder:
    """A ``start_response`` that checks its arguments the way PEP 3333 asks."""

    calls: list[tuple[str, list[tuple[str, str]], Any]] = field(default_factory=list)
    written: list[bytes] = field(default_factory=list)

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        assert isinstance(status, str)
        assert re.fullmatch(r"\d{3} .+", status), status
        assert type(headers) is list
        for name, value in headers:
            assert type(name) is str
            assert type(value) is str
            assert "\r" not in value
            assert "\n" not in value
        self.calls.append((status, headers, exc_info))
        return self.written.append

    @property
    def status(self) -> str:
        return self.calls[-1][0]

    @property
    def headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.calls[-1][1]}

    def header_text(self) -> str:
        return "\n".join(f"{name}: {value}" for name, value in self.calls[-1][1])


@dataclass
class Result:
    status: str
    headers: dict[str, str]
    header_text: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def make_environ(
    path: str = "/api/items",
    *,
    authorization: str | None = None,
    method: str = "GET",
    query: str = "",
    headers: dict[str, str] | None = None,
    remote_addr: str | None = PEER,
) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "REQUEST_METHOD": method,
        "QUERY_STRING": query,
    }
    if remote_addr is not None:
        environ["REMOTE_ADDR"] = remote_addr
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    return environ


def serve(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> Result:
    """What a WSGI server does: call, iterate, always close."""
    recorder = Recorder()
    iterable = app(environ, recorder)
    try:
        body = b"".join(iterable)
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    return Result(recorder.status, recorder.headers, recorder.header_text(), body)


def fingerprint(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]


def unverified_claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def key_secrets(key: SigningKey) -> tuple[bytes | str, ...]:
    if key.alg.startswith("HS"):
        return (key.secret,)
    pem = key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return (pem, pem.splitlines()[1])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def expected_challenge(reason: str, scope: str | None = None) -> str:
    error = CONTRACT[reason][1]
    if error is None:
        return 'Bearer realm="api"'
    value = (
        f'Bearer realm="api", error="{error}", error_description="{REASONS[reason].description}"'
    )
    if scope is not None:
        value += f', scope="{scope}"'
    return value


def assert_denied(
    result: Result,
    events: CapturedEvents,
    reason: str,
    *,
    path: str = "/api/items",
    method: str = "GET",
    scope: str | None = None,
) -> dict[str, Any]:
    """The response and the single event of a denial; returns the event."""
    status_line, error = CONTRACT[reason]
    assert result.status == status_line
    assert result.headers["www-authenticate"] == expected_challenge(reason, scope)
    assert result.headers["content-type"] == "application/json"
    assert int(result.headers["content-length"]) == len(result.body)
    body = result.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == (error or reason)
    assert body["error_description"] == REASONS[reason].description
    assert "app" not in body
    event = events.only()
    assert event["schema"] == "jwt-audit/1"
    assert event["event"] == "denial"
    assert event["outcome"] == "denied"
    assert event["reason"] == reason
    assert event["status"] == int(status_line[:3])
    assert event["method"] == method
    assert event["path"] == path
    assert event["protocol"] == "http"
    assert event["client_ip"] == PEER
    assert TIME_FORMAT.fullmatch(event["time"])
    assert isinstance(event["duration_ms"], float)
    assert event["duration_ms"] >= 0
    return event


def assert_clean(result: Result, events: CapturedEvents, *tokens: str, secrets: Any = ()) -> None:
    for token in tokens:
        for text in (result.body, result.header_text, events.text()):
            assert_no_secret(text, token, *secrets)


# -- denials: one row per reason code --------------------------------------------


@dataclass
class Case:
    reason: str
    authorization: str | None
    token: str | None = None  # the token whose identity fields must (not) appear
    verified: bool = False  # whether its signature verifies
    options: dict[str, Any] = field(default_factory=dict)


async def async_revoked(claims: dict[str, Any]) -> bool:
    return claims.get("sub") == "alice"


def sync_revoked(claims: dict[str, Any]) -> bool:
    return claims.get("sub") == "alice"


def build_case(name: str, keys: dict[str, SigningKey], forger: SigningKey) -> Case:
    rsa = keys["RS256"]
    now = int(time.time())

    def signed(**claims: Any) -> str:
        return rsa.token({"iss": ISSUER, "aud": AUDIENCE, **claims})

    good = signed()
    if name.startswith("revoked"):
        check = async_revoked if name.endswith("async") else sync_revoked
        return Case("revoked", f"Bearer {good}", good, True, {"revocation_check": check})
    if name.startswith("token_too_large"):
        value = "Bearer " + ("a" * 300 if name.endswith("header") else good)
        return Case("token_too_large", value, good, options={"max_token_bytes": 64})
    signed_cases = {
        "algorithm_not_allowed": keys["HS256"].token(iss=ISSUER, aud=AUDIENCE),
        "unknown_key": rsa.token(iss=ISSUER, aud=AUDIENCE, headers={"kid": "other"}),
        "bad_signature": forger.token(sub="mallory", iss=ISSUER, aud=AUDIENCE),
        "invalid_type": good,
        "expired": signed(exp=now - 60),
        "not_yet_valid": signed(nbf=now + 600),
        "invalid_issuer": signed(iss="https://evil.example"),
        "invalid_audience": signed(aud="other"),
        "missing_claim": rsa.token(iss=ISSUER, aud=AUDIENCE, expires_in=None),
    }
    if name in signed_cases:
        token = signed_cases[name]
        options: dict[str, Any] = {}
        if name == "unknown_key":
            options = {"public_key": None, "jwks": jwks_document(rsa)}
        elif name == "invalid_type":
            options = {"token_type": "at+jwt"}
        verified = name not in ("algorithm_not_allowed", "unknown_key", "bad_signature")
        verified = verified and name != "invalid_type"
        return Case(name, f"Bearer {token}", token, verified, options)
    header_cases: dict[str, tuple[str, str | None, str | None]] = {
        "missing_token": ("missing_token", None, None),
        "unsupported_scheme_basic": ("unsupported_scheme", "Basic dXNlcjpwYXNz", None),
        "unsupported_scheme_token": ("unsupported_scheme", f"Token {good}", good),
        "invalid_request_joined": ("invalid_request", f"Bearer {good},Bearer {good}", good),
        "invalid_request_joined_space": (
            "invalid_request",
            f"Bearer {good}, Basic dXNlcjpwYXNz",
            good,
        ),
        "invalid_request_tab": ("invalid_request", f"Bearer\t{good}", good),
        "invalid_request_no_space": ("invalid_request", f"Bearer{good}", good),
        "invalid_request_trailing_comma": ("invalid_request", f"Bearer {good},", good),
        "invalid_request_empty": ("invalid_request", "Bearer ", None),
        "invalid_request_scheme_only": ("invalid_request", "Bearer", None),
        "invalid_request_characters": ("invalid_request", f"Bearer {good[:-4]}%2F==", good),
        "malformed_one_segment": ("malformed_token", "Bearer abcdef", None),
        "malformed_empty_segment": ("malformed_token", "Bearer abc..def", None),
        "malformed_header_json": ("malformed_token", f"Bearer {b64(b'{not json')}.e30.c2ln", None),
        "malformed_header_array": ("malformed_token", f"Bearer {b64(b'[1]')}.e30.c2ln", None),
    }
    reason, authorization, token = header_cases[name]
    return Case(reason, authorization, token)


DENIAL_CASES = [
    "missing_token",
    "unsupported_scheme_basic",
    "unsupported_scheme_token",
    "invalid_request_joined",
    "invalid_request_joined_space",
    "invalid_request_tab",
    "invalid_request_no_space",
    "invalid_request_trailing_comma",
    "invalid_request_empty",
    "invalid_request_scheme_only",
    "invalid_request_characters",
    "token_too_large",
    "token_too_large_header",
    "malformed_one_segment",
    "malformed_empty_segment",
    "malformed_header_json",
    "malformed_header_array",
    "algorithm_not_allowed",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "invalid_issuer",
    "invalid_audience",
    "missing_claim",
    "invalid_type",
    "revoked_sync",
    "revoked_async",
]


def rsa_options(rsa_key: SigningKey, **extra: Any) -> dict[str, Any]:
    options = rsa_key.options(issuer=ISSUER, audience=AUDIENCE)
    options.update(extra)
    return {name: value for name, value in options.items() if value is not None}


@pytest.mark.parametrize("name", DENIAL_CASES)
def test_denial(
    name: str,
    keys: dict[str, SigningKey],
    rsa_key: SigningKey,
    other_rsa_key: SigningKey,
    events: CapturedEvents,
) -> None:
    case = build_case(name, keys, other_rsa_key)
    middleware = JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key, **case.options))
    query_token = rsa_key.token(iss=ISSUER, aud=AUDIENCE, sub="query-user")
    environ = make_environ(
        authorization=case.authorization,
        method="POST",
        query=f"page=2&access_token={query_token}",
        headers={"X-Request-ID": "req-42"},
    )

    result = serve(middleware, environ)

    event = assert_denied(result, events, case.reason, method="POST")
    assert event["request_id"] == "req-42"
    assert "?" not in event["path"]
    assert "jwt_audit" not in environ
    assert "REMOTE_USER" not in environ
    if case.verified:
        assert case.token is not None
        claims = unverified_claims(case.token)
        assert event["subject"] == "alice"
        assert event["issuer"] == claims["iss"]
        assert event["token_id"] == claims["jti"]
        assert event["alg"] == "RS256"
        assert event["kid"] == "rs256-1"
    else:
        assert event["subject"] is None
        assert event["issuer"] is None
        assert event["token_id"] is None
        assert event["audience"] == []
        assert event["claims"] == {}
    if case.reason in ("bad_signature", "unknown_key", "invalid_type", "malformed_token"):
        assert case.token is None or event["token_fingerprint"] == fingerprint(case.token)
    if case.reason in ("bad_signature", "unknown_key"):
        assert event["alg"] == "RS256"
    if name == "missing_token":
        assert event["token_fingerprint"] is None
    tokens = [query_token] + ([case.token] if case.token else [])
    assert_clean(result, events, *tokens, secrets=key_secrets(rsa_key))


def test_denial_with_hmac_secret_never_leaks(keys: dict[str, SigningKey], events: CapturedEvents):
    key = keys["HS256"]
    token = key.token(exp=int(time.time()) - 10)
    result = serve(
        JWTAuditWSGIMiddleware(echo_app, **key.options()),
        make_environ(authorization=f"Bearer {token}"),
    )
    event = assert_denied(result, events, "expired")
    assert event["alg"] == "HS256"
    assert event["token_fingerprint"] == fingerprint(token)
    assert_clean(result, events, token, secrets=key_secrets(key))


def test_bearer_scheme_is_case_insensitive(rsa_key: SigningKey, events: CapturedEvents) -> None:
    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE)
    result = serve(
        JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key)),
        make_environ(authorization=f"bEaReR {token}"),
    )
    assert result.status == "200 OK"
    assert result.json()["remote_user"] == "alice"
    assert events.only()["outcome"] == "allowed"


def test_revocation_check_sees_the_verified_claims(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    seen: list[dict[str, Any]] = []

    def not_revoked(claims: dict[str, Any]) -> bool:
        seen.append(dict(claims))
        return False

    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE, sub="bob")
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, revocation_check=not_revoked)
    )
    result = serve(middleware, make_environ(authorization=f"Bearer {token}"))
    assert result.status == "200 OK"
    assert [claims["sub"] for claims in seen] == ["bob"]
    assert seen[0]["jti"] == unverified_claims(token)["jti"]
    assert events.only()["subject"] == "bob"


def test_async_revocation_check_allows(rsa_key: SigningKey, events: CapturedEvents) -> None:
    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE, sub="carol")  # async_revoked: only alice
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, revocation_check=async_revoked)
    )
    result = serve(middleware, make_environ(authorization=f"Bearer {token}"))
    assert result.status == "200 OK"
    assert result.json()["remote_user"] == "carol"
    assert events.only()["outcome"] == "allowed"


def test_insufficient_scope(rsa_key: SigningKey, events: CapturedEvents) -> None:
    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE, scope="read admin:read")
    middleware = JWTAuditWSGIMiddleware(
        echo_app,
        **rsa_options(rsa_key, path_scopes={"/admin": ["admin:read", "admin:write"]}),
    )
    result = serve(
        middleware, make_environ("/admin/users", authorization=f"Bearer {token}", query="x=1")
    )
    event = assert_denied(
        result, events, "insufficient_scope", path="/admin/users", scope="admin:read admin:write"
    )
    assert event["subject"] == "alice"
    assert event["token_id"] == unverified_claims(token)["jti"]
    assert event["scopes"] == ["admin:read", "read"]
    assert event["token_fingerprint"] == fingerprint(token)
    assert_clean(result, events, token, secrets=key_secrets(rsa_key))


@pytest.mark.parametrize(
    "claims",
    [{"scope": "admin:write admin:read"}, {"scp": ["admin:read", "admin:write", "x"]}],
    ids=["scope", "scp"],
)
def test_sufficient_scope(rsa_key: SigningKey, events: CapturedEvents, claims: dict) -> None:
    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE, **claims)
    middleware = JWTAuditWSGIMiddleware(
        echo_app,
        **rsa_options(rsa_key, path_scopes={"/admin": ["admin:read", "admin:write"]}),
    )
    result = serve(middleware, make_environ("/admin", authorization=f"Bearer {token}"))
    assert result.status == "200 OK"
    event = events.only()
    assert event["outcome"] == "allowed"
    assert {"admin:read", "admin:write"} <= set(event["scopes"])


def test_no_scope_needed_outside_path_scopes(rsa_key: SigningKey, events: CapturedEvents) -> None:
    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE)
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, path_scopes={"/admin": ["admin"]})
    )
    result = serve(middleware, make_environ("/administrator", authorization=f"Bearer {token}"))
    assert result.status == "200 OK"
    assert events.only()["status"] == 200


def broken_revocation_check(claims: dict[str, Any]) -> bool:
    raise RuntimeError("revocation store is down")


def test_internal_error_is_a_500_and_a_logged_traceback(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE)
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, revocation_check=broken_revocation_check)
    )
    environ = make_environ(authorization=f"Bearer {token}")

    result = serve(middleware, environ)  # no exception reaches the caller

    event = assert_denied(result, events, "internal_error")
    assert "jwt_audit" not in environ
    internal = [r for r in events.records if r.name == "jwt_audit.internal"]
    assert len(internal) == 1
    assert internal[0].levelno == logging.ERROR
    assert internal[0].exc_info is not None
    assert internal[0].exc_info[0] is RuntimeError
    assert any("revocation store is down" in line for line in events.lines)
    assert event["reason"] == "internal_error"
    assert_clean(result, events, token, secrets=key_secrets(rsa_key))


# -- valid tokens ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256", "EdDSA", "PS256", "ES384"])
def test_valid_token(alg: str, keys: dict[str, SigningKey], events: CapturedEvents) -> None:
    key = keys[alg]
    token = key.token(iss=ISSUER, aud=AUDIENCE, scope="read write", sub=f"user-{alg}")
    middleware = JWTAuditWSGIMiddleware(echo_app, **key.options(issuer=ISSUER, audience=AUDIENCE))
    environ = make_environ(
        authorization=f"Bearer {token}", query="page=2", headers={"User-Agent": "curl/8"}
    )
    recorder = Recorder()

    iterable = middleware(environ, recorder)
    assert events == []  # the access event waits for the body
    body = b"".join(iterable)
    assert len(events) == 1  # exhausted: emitted, before the server's close()
    iterable.close()
    assert len(events) == 1

    assert recorder.status == "200 OK"
    seen = json.loads(body)
    claims = unverified_claims(token)
    assert seen == {
        "app": True,
        "remote_user": f"user-{alg}",
        "claims": claims,
        "token": "VerifiedToken",
    }
    verified = environ["jwt_audit"]
    assert isinstance(verified, VerifiedToken)
    assert verified.claims == claims
    assert verified.subject == f"user-{alg}"
    assert verified.alg == alg
    assert verified.kid == key.kid
    assert verified.scopes == frozenset({"read", "write"})
    assert verified.fingerprint == fingerprint(token)
    assert environ["REMOTE_USER"] == f"user-{alg}"
    assert get_claims(environ) == claims

    event = events.only()
    assert event["event"] == "access"
    assert event["outcome"] == "allowed"
    assert event["reason"] is None
    assert event["status"] == 200
    assert event["method"] == "GET"
    assert event["path"] == "/api/items"
    assert event["protocol"] == "http"
    assert event["client_ip"] == PEER
    assert event["user_agent"] == "curl/8"
    assert GENERATED_ID.fullmatch(event["request_id"])
    assert event["subject"] == f"user-{alg}"
    assert event["issuer"] == ISSUER
    assert event["token_id"] == claims["jti"]
    assert event["audience"] == [AUDIENCE]
    assert event["scopes"] == ["read", "write"]
    assert event["alg"] == alg
    assert event["kid"] == key.kid
    assert event["token_fingerprint"] == fingerprint(token)
    assert event["claims"] == {}
    assert TIME_FORMAT.fullmatch(event["time"])
    text = events.text() + "\n" + recorder.header_text()
    assert_no_secret(text, token, *key_secrets(key))
    assert_no_secret(body, token, *key_secrets(key))


def test_token_type_accepts_media_type_form(rsa_key: SigningKey, events: CapturedEvents) -> None:
    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE, headers={"typ": "application/AT+JWT"})
    middleware = JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key, token_type="at+jwt"))
    result = serve(middleware, make_environ(authorization=f"Bearer {token}"))
    assert result.status == "200 OK"
    assert events.only()["outcome"] == "allowed"


def test_non_ascii_path_is_decoded_for_the_event(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE)
    path = "/café".encode().decode("latin-1")  # PEP 3333: bytes as latin-1 str
    result = serve(
        JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key)),
        make_environ(path, authorization=f"Bearer {token}"),
    )
    assert result.status == "200 OK"
    assert events.only()["path"] == "/café"


# -- the response iterable: close() and the access event ---------------------------


class TrackedBody:
    """A response iterable with a ``close()`` that records being called."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if self.fail_after is not None and index >= self.fail_after:
                raise OSError("disk went away")
            yield chunk

    def close(self) -> None:
        self.closed += 1


def authorized_environ(rsa_key: SigningKey, path: str = "/api/items") -> dict[str, Any]:
    return make_environ(path, authorization=f"Bearer {rsa_key.token(iss=ISSUER, aud=AUDIENCE)}")


def test_access_event_when_exhausted_with_the_apps_status(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    body = TrackedBody([b"a", b"b"])

    def created_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> TrackedBody:
        start_response("201 Created", [("Content-Type", "text/plain")])
        return body

    middleware = JWTAuditWSGIMiddleware(created_app, **rsa_options(rsa_key))
    recorder = Recorder()
    iterable = middleware(authorized_environ(rsa_key), recorder)
    assert recorder.status == "201 Created"
    assert events == []
    assert list(iterable) == [b"a", b"b"]
    event = events.only()  # exhausted first: emitted then
    assert event["status"] == 201
    assert event["event"] == "access"
    assert body.closed == 0

    iterable.close()
    assert body.closed == 1
    iterable.close()  # neither close emits anything more
    assert len(events) == 1


def test_access_event_when_closed_early(rsa_key: SigningKey, events: CapturedEvents) -> None:
    body = TrackedBody([b"a", b"b", b"c"])

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> TrackedBody:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    middleware = JWTAuditWSGIMiddleware(app, **rsa_options(rsa_key))
    iterable = middleware(authorized_environ(rsa_key), Recorder())
    chunks = iter(iterable)
    assert next(chunks) == b"a"  # the client went away after one chunk
    assert events == []
    iterable.close()
    assert body.closed == 1
    assert events.only()["status"] == 200


def test_inner_close_called_even_when_iteration_raised(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    body = TrackedBody([b"a", b"b", b"c"], fail_after=1)

    def failing_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> TrackedBody:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    middleware = JWTAuditWSGIMiddleware(failing_app, **rsa_options(rsa_key))
    iterable = middleware(authorized_environ(rsa_key), Recorder())
    received: list[bytes] = []

    def drain() -> None:  # a server's loop: iterate, and close whatever happens
        try:
            received.extend(iterable)
        finally:
            iterable.close()

    with pytest.raises(OSError, match="disk went away"):
        drain()
    assert received == [b"a"]
    assert body.closed == 1
    event = events.only()
    assert event["status"] == 200
    assert event["subject"] == "alice"


def test_event_emitted_even_if_inner_close_raises(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    class BadClose(TrackedBody):
        def close(self) -> None:
            super().close()
            raise ValueError("close failed")

    body = BadClose([b"x"])

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> TrackedBody:
        start_response("202 Accepted", [])
        return body

    iterable = JWTAuditWSGIMiddleware(app, **rsa_options(rsa_key))(
        authorized_environ(rsa_key), Recorder()
    )
    assert list(iterable) == [b"x"]
    with pytest.raises(ValueError, match="close failed"):
        iterable.close()
    assert body.closed == 1
    assert events.only()["status"] == 202


def test_generator_app_status_known_only_after_iteration(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    def generator_app(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterator[bytes]:
        start_response("206 Partial Content", [("Content-Type", "text/plain")])
        yield b"part"

    result = serve(
        JWTAuditWSGIMiddleware(generator_app, **rsa_options(rsa_key)), authorized_environ(rsa_key)
    )
    assert result.status == "206 Partial Content"
    assert result.body == b"part"
    assert events.only()["status"] == 206


def test_status_of_a_second_start_response_with_exc_info(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    def recovering_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise KeyError("boom")
        except KeyError:
            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"sorry"]

    result = serve(
        JWTAuditWSGIMiddleware(recovering_app, **rsa_options(rsa_key)), authorized_environ(rsa_key)
    )
    assert result.status == "503 Service Unavailable"
    assert events.only()["status"] == 503


def test_app_raising_before_returning(rsa_key: SigningKey, events: CapturedEvents) -> None:
    def crashing_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise LookupError("no such thing")

    middleware = JWTAuditWSGIMiddleware(crashing_app, **rsa_options(rsa_key))
    with pytest.raises(LookupError, match="no such thing"):
        middleware(authorized_environ(rsa_key), Recorder())
    event = events.only()
    assert event["event"] == "access"
    assert event["outcome"] == "allowed"
    assert event["status"] == 500
    assert event["subject"] == "alice"


# -- path policy -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/health/live", "/static/app.css"])
def test_exempt_paths_need_no_token(
    path: str, rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, exempt_paths=["/health", "/static/"])
    )
    forged = other_rsa_key.token(iss=ISSUER, aud=AUDIENCE)
    for authorization in (None, f"Bearer {forged}"):
        events.clear()
        result = serve(middleware, make_environ(path, authorization=authorization))
        assert result.status == "200 OK"
        assert result.json()["claims"] is None
        assert result.json()["remote_user"] is None
        event = events.only()
        assert event["event"] == "access"
        assert event["outcome"] == "allowed"
        assert event["status"] == 200
        assert event["path"] == path
        assert event["subject"] is None
        assert_clean(result, events, forged)


@pytest.mark.parametrize("path", ["/health/../admin", "/healthz", "/health/./../admin", "//admin"])
def test_not_exempt(path: str, rsa_key: SigningKey, events: CapturedEvents) -> None:
    middleware = JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key, exempt_paths=["/health"]))
    result = serve(middleware, make_environ(path))
    event = assert_denied(result, events, "missing_token", path=path)
    assert event["subject"] is None


def test_optional_paths(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, optional_paths=["/public"])
    )

    anonymous = serve(middleware, make_environ("/public/page"))
    assert anonymous.status == "200 OK"
    assert anonymous.json() == {
        "app": True,
        "remote_user": None,
        "claims": None,
        "token": "NoneType",
    }
    event = events.only()
    assert (event["outcome"], event["status"], event["subject"]) == ("allowed", 200, None)

    events.clear()
    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE, sub="dave")
    known = serve(middleware, make_environ("/public/page", authorization=f"Bearer {token}"))
    assert known.json()["remote_user"] == "dave"
    assert known.json()["claims"]["sub"] == "dave"
    assert events.only()["subject"] == "dave"

    events.clear()
    forged = other_rsa_key.token(iss=ISSUER, aud=AUDIENCE)
    denied = serve(middleware, make_environ("/public/page", authorization=f"Bearer {forged}"))
    assert_denied(denied, events, "bad_signature", path="/public/page")

    events.clear()
    expired = rsa_key.token(iss=ISSUER, aud=AUDIENCE, expires_in=-30)
    late = serve(middleware, make_environ("/public/page", authorization=f"Bearer {expired}"))
    assert_denied(late, events, "expired", path="/public/page")

    events.clear()
    empty = serve(middleware, make_environ("/public/page", authorization="Bearer "))
    assert_denied(empty, events, "invalid_request", path="/public/page")


# -- report-only -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path", "status"),
    [
        ("missing_token", "/api/items", 401),
        ("expired", "/reports/2024", 401),
        ("bad_signature", "/api/items", 401),
        ("invalid_request_tab", "/v1/orders/7", 400),
        ("revoked_sync", "/api/items", 401),
    ],
)
def test_report_only_lets_invalid_requests_through(
    name: str,
    path: str,
    status: int,
    keys: dict[str, SigningKey],
    rsa_key: SigningKey,
    other_rsa_key: SigningKey,
    events: CapturedEvents,
) -> None:
    case = build_case(name, keys, other_rsa_key)
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, mode="report-only", **case.options)
    )
    environ = make_environ(path, authorization=case.authorization)
    result = serve(middleware, environ)

    assert result.status == "200 OK"
    assert "www-authenticate" not in result.headers
    seen = result.json()
    assert seen["app"] is True
    assert seen["claims"] is None
    assert seen["remote_user"] is None
    assert get_claims(environ) is None
    assert "REMOTE_USER" not in environ
    event = events.only()
    assert event["event"] == "denial"
    assert event["outcome"] == "would_deny"
    assert event["reason"] == case.reason
    assert event["status"] == status
    assert event["path"] == path
    if case.verified:
        assert event["subject"] == "alice"
    else:
        assert event["subject"] is None
    assert_clean(result, events, *([case.token] if case.token else []))


def test_report_only_valid_token_is_an_access(rsa_key: SigningKey, events: CapturedEvents) -> None:
    middleware = JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key, mode="report-only"))
    environ = authorized_environ(rsa_key)
    result = serve(middleware, environ)
    assert result.status == "200 OK"
    assert environ["REMOTE_USER"] == "alice"
    event = events.only()
    assert (event["event"], event["outcome"], event["reason"], event["status"]) == (
        "access",
        "allowed",
        None,
        200,
    )


def test_report_only_insufficient_scope(rsa_key: SigningKey, events: CapturedEvents) -> None:
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, mode="report-only", path_scopes={"/admin": ["admin"]})
    )
    result = serve(middleware, authorized_environ(rsa_key, "/admin"))
    assert result.status == "200 OK"
    event = events.only()
    assert (event["outcome"], event["reason"], event["status"]) == (
        "would_deny",
        "insufficient_scope",
        403,
    )
    assert event["subject"] == "alice"


# -- request fields: request id, client ip, user agent -------------------------------


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("req-1234", True),
        ("0b5f7e9a-3c2d-4e1f-9a8b-7c6d5e4f3a2b", True),
        ("trace:abc/def@x=1", True),
        ("bad id", False),
        ("evil\r\ninjected", False),
        ("x" * 129, False),
        ("", False),
    ],
)
def test_request_id_header(
    value: str, kept: bool, rsa_key: SigningKey, events: CapturedEvents
) -> None:
    middleware = JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key))
    serve(middleware, make_environ(headers={"X-Request-ID": value}))
    request_id = events.only()["request_id"]
    if kept:
        assert request_id == value
    else:
        assert GENERATED_ID.fullmatch(request_id)


def test_custom_request_id_header(rsa_key: SigningKey, events: CapturedEvents) -> None:
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, request_id_header="X-Correlation-ID")
    )
    serve(middleware, make_environ(headers={"X-Correlation-ID": "corr-7", "X-Request-ID": "no"}))
    assert events.only()["request_id"] == "corr-7"


def test_request_ids_are_generated_per_request(rsa_key: SigningKey, events: CapturedEvents) -> None:
    middleware = JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key))
    serve(middleware, make_environ())
    serve(middleware, make_environ())
    ids = [event["request_id"] for event in events]
    assert len(ids) == 2
    assert ids[0] != ids[1]


@pytest.mark.parametrize(
    ("trusted", "peer", "headers", "client_ip"),
    [
        ((), "10.0.0.1", {"X-Forwarded-For": "203.0.113.7"}, "10.0.0.1"),
        (("10.0.0.0/8",), "192.0.2.99", {"X-Forwarded-For": "203.0.113.7"}, "192.0.2.99"),
        (("10.0.0.0/8",), "10.0.0.1", {"X-Forwarded-For": "203.0.113.7"}, "203.0.113.7"),
        (
            ("10.0.0.0/8",),
            "10.0.0.1",
            {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.0.0.2"},
            "203.0.113.7",
        ),
        (("10.0.0.0/8",), "10.0.0.1", {"Forwarded": "for=203.0.113.8;proto=https"}, "203.0.113.8"),
        (("10.0.0.0/8",), "10.0.0.1", {}, "10.0.0.1"),
        (("10.0.0.0/8",), "10.0.0.1", {"X-Forwarded-For": "unknown"}, "10.0.0.1"),
    ],
)
def test_client_ip_and_trusted_proxies(
    trusted: tuple[str, ...],
    peer: str,
    headers: dict[str, str],
    client_ip: str,
    rsa_key: SigningKey,
    events: CapturedEvents,
) -> None:
    middleware = JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key, trusted_proxies=trusted))
    serve(middleware, make_environ(headers=headers, remote_addr=peer))
    assert events.only()["client_ip"] == client_ip


def test_user_agent_control_characters_are_escaped(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    middleware = JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key))
    serve(
        middleware,
        make_environ(headers={"User-Agent": 'Mozilla\r\n{"event":"access"}\x1b[31m'}),
    )
    agent = events.only()["user_agent"]
    assert agent == 'Mozilla\\x0d\\x0a{"event":"access"}\\x1b[31m'
    for line in events.lines:
        assert "\r" not in line
        assert "\n" not in line
        assert "\x1b" not in line


def test_long_user_agent_is_capped(rsa_key: SigningKey, events: CapturedEvents) -> None:
    middleware = JWTAuditWSGIMiddleware(echo_app, **rsa_options(rsa_key))
    serve(middleware, make_environ(headers={"User-Agent": "A" * 5000}))
    agent = events.only()["user_agent"]
    assert agent.startswith("AAAA")
    assert 16 < len(agent) <= 300


def test_hostile_claims_cannot_break_logging(rsa_key: SigningKey, events: CapturedEvents) -> None:
    hostile = "x\r\ny\x1bz\u2028w"
    token = rsa_key.token(
        iss=ISSUER,
        aud=AUDIENCE,
        sub=hostile * 3,
        message="forged\nline",
        args=["%s", "%d"],
        exc_info=True,
    )
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, log_claims=["message", "args", "exc_info"])
    )
    result = serve(middleware, make_environ(authorization=f"Bearer {token}"))

    assert result.status == "200 OK"
    event = events.only()
    assert event["subject"] == "x\\x0d\\x0ay\\x1bz\\u2028w" * 3
    assert event["claims"] == {
        "message": "forged\\x0aline",
        "args": ["%s", "%d"],
        "exc_info": True,
    }
    json_lines = [line for line in events.lines if line.startswith("{")]
    assert json_lines
    for line in json_lines:
        assert len(line.splitlines()) == 1
        parsed = json.loads(line)
        assert parsed["event"] == "access"
    for line in events.lines:
        assert len(line.splitlines()) == 1
        assert "\x1b" not in line
    assert events.records[0].getMessage().startswith("access allowed GET /api/items status=200")
    assert_no_secret(events.text(), token)


def forged_with_header(header: dict[str, Any]) -> str:
    payload = {"sub": "mallory", "exp": int(time.time()) + 60}
    return ".".join(
        (b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(b"s" * 32))
    )


@pytest.mark.parametrize(
    ("header", "reason", "field", "logged"),
    [
        ({"alg": "RS256", "kid": "k\r\n\x1b[31m"}, "unknown_key", "kid", "k\\x0d\\x0a\\x1b[31m"),
        ({"alg": "HS256\n\u2028"}, "algorithm_not_allowed", "alg", "HS256\\x0a\\u2028"),
    ],
    ids=["kid", "alg"],
)
def test_hostile_header_fields_are_escaped(
    header: dict[str, Any],
    reason: str,
    field: str,
    logged: str,
    rsa_key: SigningKey,
    events: CapturedEvents,
) -> None:
    token = forged_with_header(header)
    middleware = JWTAuditWSGIMiddleware(echo_app, algorithms=["RS256"], jwks=jwks_document(rsa_key))
    result = serve(middleware, make_environ(authorization=f"Bearer {token}"))
    event = assert_denied(result, events, reason)
    assert event[field] == logged
    assert event["subject"] is None
    for line in events.lines:
        assert len(line.splitlines()) == 1
    assert_clean(result, events, token)


def test_internal_error_traceback_cannot_split_a_json_line(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    def unknown_subject(claims: dict[str, Any]) -> bool:
        raise LookupError(f"unknown subject {claims['sub']}")

    token = rsa_key.token(iss=ISSUER, aud=AUDIENCE, sub="eve\u2028x\x85y\u2029z")
    middleware = JWTAuditWSGIMiddleware(
        echo_app, **rsa_options(rsa_key, revocation_check=unknown_subject)
    )
    result = serve(middleware, make_environ(authorization=f"Bearer {token}"))
    assert_denied(result, events, "internal_error")
    json_lines = [line for line in events.lines if line.startswith("{")]
    assert any('"exception"' in line for line in json_lines)
    for line in json_lines:
        assert len(line.splitlines()) == 1
        json.loads(line)


@pytest.mark.parametrize("size", [1, 64, 300])
@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256", "EdDSA"])
def test_garbage_signature_is_bad_signature_for_every_algorithm(
    alg: str, size: int, keys: dict[str, SigningKey], events: CapturedEvents
) -> None:
    key = keys[alg]
    signing_input = key.token(sub="mallory").rsplit(".", 1)[0]
    forged = f"{signing_input}.{b64(bytes(range(size)) if size < 256 else b'z' * size)}"
    middleware = JWTAuditWSGIMiddleware(echo_app, **key.options())
    result = serve(middleware, make_environ(authorization=f"Bearer {forged}"))
    event = assert_denied(result, events, "bad_signature")
    assert event["alg"] == alg
    assert event["kid"] == key.kid
    assert event["subject"] is None
    assert event["token_fingerprint"] == fingerprint(forged)
    assert_clean(result, events, forged, secrets=key_secrets(key))


def test_late_denial_from_the_app_is_answered_and_audited(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    from jwt_audit_middleware.request import deny_request

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if not deny_request(environ, "insufficient_scope", required_scopes=("admin",)):
            raise AssertionError("enforce mode must deny")
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"the app's own body"]

    wrapped = JWTAuditWSGIMiddleware(app, **rsa_key.options())
    environ = make_environ(authorization=f"Bearer {rsa_key.token(sub='zed')}")
    result = serve(wrapped, environ)
    assert result.status == "403 Forbidden"
    assert result.headers["www-authenticate"].endswith('scope="admin"')
    assert result.json() == {
        "error": "insufficient_scope",
        "error_description": "The token lacks the scope this resource requires.",
    }
    event = events.only()
    assert (event["event"], event["reason"], event["status"], event["subject"]) == (
        "denial",
        "insufficient_scope",
        403,
        "zed",
    )


def test_late_denial_from_a_generator_app_never_sends_its_body(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    from jwt_audit_middleware.request import deny_request

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        deny_request(environ, "insufficient_scope", required_scopes=("admin",))
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"SECRET ADMIN DATA"

    wrapped = JWTAuditWSGIMiddleware(app, **rsa_key.options())
    result = serve(wrapped, make_environ(authorization=f"Bearer {rsa_key.token()}"))
    assert result.status == "403 Forbidden"
    assert b"SECRET" not in result.body
    assert result.json()["error"] == "insufficient_scope"
    assert int(result.headers["content-length"]) == len(result.body)
    assert events.only()["reason"] == "insufficient_scope"


def test_header_beyond_latin1_is_invalid_request_not_a_crash(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    # servers that decode headers as UTF-8 can hand over characters above U+00FF
    wrapped = JWTAuditWSGIMiddleware(echo_app, **rsa_key.options())
    result = serve(wrapped, make_environ(authorization="Bearer \u20ac\u4e2d.a.b"))
    assert result.status.startswith("400")
    assert events.only()["reason"] == "invalid_request"


# -- the path the app routes on, and the identity it may read ------------------------


def test_rules_follow_path_info_never_script_name(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    # gunicorn takes SCRIPT_NAME from a request header (forwarded_allow_ips): a client
    # sending "SCRIPT_NAME: /health" for /health/admin must not reach /admin as exempt
    middleware = JWTAuditWSGIMiddleware(
        echo_app,
        **rsa_options(rsa_key, exempt_paths=["/health"], path_scopes={"/admin": ["admin"]}),
    )
    forged = make_environ("/admin")
    forged["SCRIPT_NAME"] = "/health"
    mounted = make_environ("/health")
    mounted["SCRIPT_NAME"] = "/api"  # DispatcherMiddleware, mod_wsgi: a real mount
    assert serve(middleware, forged).status.startswith("401")
    assert serve(middleware, mounted).status == "200 OK"
    assert [(e["path"], e["reason"]) for e in events] == [
        ("/health/admin", "missing_token"),  # the event keeps the full path asked for
        ("/api/health", None),
    ]


CLIENT_IDENTITY = {"Remote-User": "admin", "X-Forwarded-User": "admin"}


def identity_seen(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    keys = ("REMOTE_USER", "HTTP_REMOTE_USER", "HTTP_X_FORWARDED_USER")
    body = json.dumps({key: environ.get(key) for key in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.mark.parametrize(
    ("case", "options", "token_claims", "path"),
    [
        ("anonymous", {"optional_paths": ["/public"]}, None, "/public"),
        ("exempt", {"exempt_paths": ["/health"]}, None, "/health"),
        ("no sub", {"required_claims": ["exp"]}, {"sub": None}, "/api/items"),
        ("report-only", {"mode": "report-only"}, None, "/api/items"),
    ],
)
def test_an_upstream_remote_user_and_client_identity_headers_never_survive(
    rsa_key: SigningKey,
    case: str,
    options: dict[str, Any],
    token_claims: dict[str, Any] | None,
    path: str,
) -> None:
    middleware = JWTAuditWSGIMiddleware(identity_seen, **rsa_options(rsa_key, **options))
    authorization = None
    if token_claims is not None:
        claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}
        authorization = "Bearer " + jwt.encode(
            claims, rsa_key.private, "RS256", headers={"kid": rsa_key.kid}
        )
    environ = make_environ(path, authorization=authorization, headers=CLIENT_IDENTITY)
    environ["REMOTE_USER"] = "admin"  # mod_wsgi's Basic auth, an outer layer
    seen = serve(middleware, environ).json()
    assert seen == {"REMOTE_USER": None, "HTTP_REMOTE_USER": None, "HTTP_X_FORWARDED_USER": None}


def test_remote_user_is_the_verified_identity(rsa_key: SigningKey) -> None:
    middleware = JWTAuditWSGIMiddleware(identity_seen, **rsa_options(rsa_key))
    environ = authorized_environ(rsa_key)
    environ.update({"REMOTE_USER": "admin", "HTTP_REMOTE_USER": "admin"})
    seen = serve(middleware, environ).json()
    assert seen == {"REMOTE_USER": "alice", "HTTP_REMOTE_USER": None, "HTTP_X_FORWARDED_USER": None}


def test_a_body_failing_before_its_first_chunk_is_audited_as_the_servers_500(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    body = TrackedBody([b"a"], fail_after=0)

    def failing_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> TrackedBody:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    iterable = JWTAuditWSGIMiddleware(failing_app, **rsa_options(rsa_key))(
        authorized_environ(rsa_key), Recorder()
    )
    with pytest.raises(OSError, match="disk went away"):
        list(iterable)
    iterable.close()  # type: ignore[attr-defined]
    assert events.only()["status"] == 500
