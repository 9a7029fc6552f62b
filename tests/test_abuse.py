"""Abuse detection through the middleware: detectors, lockout, revocation list (contract §9).

Real apps (Starlette through the ASGI middleware, Flask through the WSGI one,
Django) and the in-memory store; the same semantics on Redis are in
``test_state.py`` and, across two server processes, ``e2e/test_abuse_redis.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jwt_audit_middleware import JWTAuditMiddleware
from jwt_audit_middleware.testing import CapturedEvents, SigningKey, asgi_request

pytestmark = pytest.mark.anyio


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse({"sub": user.identity if user.is_authenticated else None})


def app(key: SigningKey, **options: Any) -> JWTAuditMiddleware:
    starlette = Starlette(routes=[Route("/orders", whoami), Route("/health", whoami)])
    return JWTAuditMiddleware(
        starlette,
        algorithms=[key.alg],
        public_key=key.public_pem,
        exempt_paths=["/health"],
        **options,
    )


async def call(
    target: Any, token: str | None = None, *, ip: str = "203.0.113.7", path: str = "/orders"
) -> Any:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return await asgi_request(target, path, headers=headers, client=(ip, 40000))


def alerts(events: CapturedEvents) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "alert"]


def requests_of(events: CapturedEvents) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] in ("access", "denial")]


# -- detectors -------------------------------------------------------------------------


async def test_denial_burst_per_ip_alerts_exactly_at_the_threshold_and_once(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(rsa_key, abuse_detection={"denials_per_ip": 5})
    forged = other_rsa_key.token()
    for _ in range(4):
        assert (await call(target, forged)).status == 401
    assert alerts(events) == []  # N-1 denials: nothing
    assert (await call(target, forged)).status == 401
    (alert,) = alerts(events)
    assert (alert["outcome"], alert["reason"]) == ("detected", "denial_burst_ip")
    assert (alert["client_ip"], alert["count"], alert["window_seconds"]) == ("203.0.113.7", 5, 60)
    alert_records = [r for r in events.records if r.jwt_audit["event"] == "alert"]  # type: ignore[attr-defined]
    assert alert_records[0].levelname == "WARNING"
    for _ in range(10):
        await call(target, forged)
    assert len(alerts(events)) == 1  # one alert per key and window, not one per request
    await call(target, forged, ip="198.51.100.1")  # another client is counted on its own
    assert len(alerts(events)) == 1
    assert len(requests_of(events)) == 16  # and every request still has its one event


async def test_denial_burst_per_subject_counts_verified_subjects_only(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(rsa_key, abuse_detection={"denials_per_subject": 3, "denials_per_ip": 100})
    for _ in range(5):  # forged tokens claiming alice: their sub is nobody's word
        await call(target, other_rsa_key.token(sub="alice"))
    assert alerts(events) == []
    for n in range(3):  # alice's own expired tokens, from three addresses
        await call(target, rsa_key.token(sub="alice", expires_in=-600), ip=f"192.0.2.{n}")
    (alert,) = alerts(events)
    assert (alert["reason"], alert["subject"], alert["count"]) == (
        "denial_burst_subject",
        "alice",
        3,
    )


async def test_one_token_from_several_addresses_is_reported_as_shared(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(rsa_key, abuse_detection={"ips_per_token": 3})
    token = rsa_key.token(sub="bob")
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.2"):
        assert (await call(target, token, ip=ip)).status == 200
    assert alerts(events) == []  # two addresses, however many requests
    assert (await call(target, token, ip="192.0.2.3")).status == 200  # alerts, never blocks
    (alert,) = alerts(events)
    assert alert["reason"] == "token_shared"
    assert alert["token_fingerprint"] == requests_of(events)[0]["token_fingerprint"]
    assert alert["count"] == 3
    await call(target, token, ip="192.0.2.4")
    assert len(alerts(events)) == 1


async def test_exempt_paths_are_neither_counted_nor_locked(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(rsa_key, abuse_detection={"denials_per_ip": 2, "lockout_seconds": 60})
    for _ in range(2):
        await call(target)  # missing_token: counted
    assert len(alerts(events)) == 1
    assert (await call(target, path="/health")).status == 200  # still reachable when locked
    assert (await call(target)).status == 429


# -- lockout ---------------------------------------------------------------------------


async def test_lockout_answers_429_before_any_signature_work_and_ends_by_itself(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(rsa_key, abuse_detection={"denials_per_ip": 3, "lockout_seconds": 1})
    forged = other_rsa_key.token()
    for _ in range(3):
        assert (await call(target, forged)).status == 401  # the third one locks the address
    verifier = target._gate.verifier  # type: ignore[attr-defined]
    verify: Callable[..., Any] = verifier.verify
    calls: list[object] = []

    def counting_verify(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return verify(*args, **kwargs)

    verifier.verify = counting_verify
    locked = await call(target, other_rsa_key.token(sub="flood"))
    assert locked.status == 429
    assert calls == []  # a look-up, not an RSA verify
    retry_after = int(locked.headers["retry-after"])
    assert retry_after == 1
    assert locked.headers["www-authenticate"].startswith('Bearer realm="api"')
    # even a valid token is locked out: the address is
    assert (await call(target, rsa_key.token())).status == 429
    event = requests_of(events)[-1]
    assert (event["event"], event["outcome"], event["reason"], event["status"]) == (
        "denial",
        "denied",
        "locked_out",
        429,
    )
    assert (await call(target, rsa_key.token(), ip="192.0.2.9")).status == 200  # others go on
    time.sleep(1.05)
    assert (await call(target, rsa_key.token())).status == 200  # the lockout ended by itself
    assert len(alerts(events)) == 1  # locked_out denials do not renew the lockout


async def test_a_locked_subject_is_refused_from_any_address(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(
        rsa_key,
        abuse_detection={"denials_per_subject": 2, "lockout_seconds": 30},
        path_scopes={"/orders": ["orders:write"]},
    )
    for n in range(2):  # insufficient_scope twice: carol is locked
        assert (await call(target, rsa_key.token(sub="carol"), ip=f"192.0.2.{n}")).status == 403
    good = rsa_key.token(sub="carol", scope="orders:write")
    assert (await call(target, good, ip="198.51.100.50")).status == 429
    dave = rsa_key.token(sub="dave", scope="orders:write")
    assert (await call(target, dave, ip="198.51.100.50")).status == 200
    (alert,) = alerts(events)
    assert "locked out for 30 s" in alert["detail"]


async def test_report_only_lockout_reports_but_lets_through(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(
        rsa_key,
        abuse_detection={"denials_per_ip": 2, "lockout_seconds": 60},
        report_only=["lockout"],
    )
    await call(target)
    await call(target)
    response = await call(target, rsa_key.token(sub="erin"))
    assert response.status == 200
    assert json.loads(response.body) == {"sub": "erin"}  # the token still reaches the app
    event = requests_of(events)[-1]
    assert (event["outcome"], event["reason"], event["subject"]) == (
        "would_deny",
        "locked_out",
        "erin",
    )


# -- revocation list and per-rule report-only --------------------------------------------


async def test_revocation_list_applies_to_cached_tokens_and_alerts_on_reuse(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(rsa_key, abuse_detection=True)
    token = rsa_key.token(sub="frank", jti="jti-frank-1")
    assert (await call(target, token)).status == 200  # now cached
    store = target.state
    assert store is not None
    store.revoke_jti("jti-frank-1", time.time() + 300, time.time())
    response = await call(target, token)
    assert response.status == 401
    assert requests_of(events)[-1]["reason"] == "revoked"
    (alert,) = alerts(events)
    assert (alert["reason"], alert["count"]) == ("revoked_token_used", 1)
    await call(target, token)
    assert len(alerts(events)) == 1


async def test_revoking_a_subject_refuses_older_tokens_and_accepts_newer(
    rsa_key: SigningKey,
) -> None:
    target = app(rsa_key)  # the list needs no abuse_detection ... but a store does
    assert target.state is None
    target = app(rsa_key, abuse_detection={"denials_per_ip": 1000})
    now = time.time()
    older = rsa_key.token(sub="grace", iat=int(now) - 60)
    store = target.state
    assert store is not None
    store.revoke_subject("grace", now - 5, None)
    newer = rsa_key.token(sub="grace", iat=int(now))  # issued after the revocation
    assert (await call(target, older)).status == 401
    assert (await call(target, newer)).status == 200
    no_iat = rsa_key.token(sub="grace", iat=None)
    assert (await call(target, no_iat)).status == 401  # cannot show it is newer


async def test_report_only_scopes_lets_an_underscoped_token_through(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(rsa_key, path_scopes={"/orders": ["orders:read"]}, report_only=["scopes"])
    response = await call(target, rsa_key.token(sub="heidi"))
    assert response.status == 200
    assert json.loads(response.body) == {"sub": "heidi"}
    event = events.only()
    assert (event["outcome"], event["reason"], event["status"]) == (
        "would_deny",
        "insufficient_scope",
        403,
    )
    # the other rules still enforce
    assert (await call(target, rsa_key.token(expires_in=-600))).status == 401


async def test_report_only_revocation_lets_the_request_on_without_the_token(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    target = app(rsa_key, report_only=["revocation"], revocation_check=lambda claims: True)
    response = await call(target, rsa_key.token(sub="ivan"))
    assert response.status == 200
    assert json.loads(response.body) == {"sub": None}  # a revoked token is never attached
    assert (events.only()["outcome"], events.only()["reason"]) == ("would_deny", "revoked")


async def test_nothing_configured_means_no_guard(rsa_key: SigningKey) -> None:
    assert app(rsa_key).state is None


# -- WSGI (Flask) and Django reach the same check ----------------------------------------


def test_flask_through_the_wsgi_middleware_is_locked_out(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    from flask import Flask

    from jwt_audit_middleware.wsgi import JWTAuditWSGIMiddleware

    flask_app = Flask(__name__)
    flask_app.add_url_rule("/orders", "orders", lambda: {"ok": True})
    flask_app.wsgi_app = JWTAuditWSGIMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app,
        algorithms=["RS256"],
        public_key=rsa_key.public_pem,
        abuse_detection={"denials_per_ip": 2, "lockout_seconds": 60},
    )
    client = flask_app.test_client()
    environ = {"REMOTE_ADDR": "192.0.2.77"}
    for _ in range(2):
        assert client.get("/orders", environ_base=environ).status_code == 401
    locked = client.get(
        "/orders", environ_base=environ, headers={"Authorization": f"Bearer {rsa_key.token()}"}
    )
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "60"
    assert len(alerts(events)) == 1


async def test_a_store_that_breaks_fails_closed_as_internal_error(
    rsa_key: SigningKey, events: CapturedEvents, caplog: pytest.LogCaptureFixture
) -> None:
    target = app(rsa_key, abuse_detection=True)
    store = target.state
    assert store is not None

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the store")

    store.probe = broken  # type: ignore[method-assign]
    response = await call(target, rsa_key.token(sub="kim"))
    assert response.status == 500  # a bug of ours never lets a request through
    assert requests_of(events)[-1]["reason"] == "internal_error"
    assert "a bug in the store" in caplog.text  # with its traceback, on jwt_audit.internal
