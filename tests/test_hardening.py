"""Edges found in review of abuse detection, method rules and settings (issue 15, 13).

Each test pins one finding of a review: revocation over report-only denials,
method case, URL passwords in repr, clients without an address, races in the
lockout mirror, rules with spaces or HEAD, a usable state_url, shared denials.
Each failed on the code as reviewed.  Real middlewares and the in-memory store where
the finding shows through them; the Gate or PathPolicy where it is a unit's own.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.test import EnvironBuilder, run_wsgi_app

from jwt_audit_middleware import (
    ConfigurationError,
    JWTAuditMiddleware,
    JWTAuditWSGIMiddleware,
    Settings,
)
from jwt_audit_middleware.policy import Gate, PathPolicy
from jwt_audit_middleware.testing import CapturedEvents, SigningKey, asgi_request

IP = "203.0.113.7"


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse({"sub": user.identity if user.is_authenticated else None})


def asgi_app(key: SigningKey, **options: Any) -> JWTAuditMiddleware:
    starlette = Starlette(routes=[Route("/orders", whoami)])
    return JWTAuditMiddleware(starlette, algorithms=[key.alg], public_key=key.public_pem, **options)


async def call(target: Any, token: str | None = None, *, ip: str | None = IP) -> Any:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    client = None if ip is None else (ip, 40000)
    return await asgi_request(target, "/orders", headers=headers, client=client)


def requests_of(events: CapturedEvents) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] in ("access", "denial")]


# -- 1. a token on the store's revocation list gets through a report-only rule ----------


@pytest.mark.anyio
async def test_report_only_scopes_still_enforces_the_revocation_list(
    rsa_key: SigningKey, events: CapturedEvents
) -> None:
    """report_only=["scopes"] must not turn a revoked token into a would-deny that runs.

    abuse.Guard.apply() only applies ``answer.revoked`` when ``verdict.reason is
    None``; a report-only insufficient_scope would-deny has a reason but goes on,
    with the (revoked) token attached.  The revocation_check hook handles this case
    (Gate._allowed sets pending for it); the store's list does not.
    """
    target = asgi_app(
        rsa_key,
        path_scopes={"/orders": ["orders:write"]},
        report_only=["scopes"],
        abuse_detection=True,
    )
    token = rsa_key.token(jti="revoked-1", scope="orders:read")
    target.state.revoke_jti("revoked-1", time.time() + 600, time.time())  # type: ignore[union-attr]
    response = await call(target, token)
    assert response.status == 401, response.body  # revocation is enforced, not report-only
    (event,) = requests_of(events)
    assert (event["outcome"], event["reason"]) == ("denied", "revoked")


@pytest.mark.anyio
async def test_report_only_lockout_still_enforces_the_revocation_list(
    rsa_key: SigningKey, other_rsa_key: SigningKey, events: CapturedEvents
) -> None:
    """report_only=["lockout"]: a locked client's revoked token must still be refused.

    Guard.apply() returns the report-only ``locked_out`` would-deny (token
    attached) before it looks at ``answer.revoked``.
    """
    target = asgi_app(
        rsa_key,
        abuse_detection={"denials_per_ip": 2, "lockout_seconds": 60},
        report_only=["lockout"],
    )
    for _ in range(2):  # the IP crosses the threshold: locked (reported only)
        assert (await call(target, other_rsa_key.token())).status == 401
    token = rsa_key.token(jti="revoked-2")
    target.state.revoke_jti("revoked-2", time.time() + 600, time.time())  # type: ignore[union-attr]
    response = await call(target, token)
    assert response.status == 401, response.body
    last = requests_of(events)[-1]
    assert last["reason"] == "revoked"


def test_global_report_only_never_attaches_a_revoked_token_even_when_locked(
    rsa_key: SigningKey, other_rsa_key: SigningKey
) -> None:
    """mode=report-only: 'a revoked token is never attached, not even in report-only mode'."""
    settings = Settings(
        algorithms=[rsa_key.alg],
        public_key=rsa_key.public_pem,
        mode="report-only",
        abuse_detection={"denials_per_ip": 2, "lockout_seconds": 60},
    )
    gate = Gate(settings)
    for _ in range(2):
        gate.decide_sync("/orders", [f"Bearer {other_rsa_key.token()}"], IP)
    assert gate.guard is not None
    gate.guard.store.revoke_jti("revoked-3", time.time() + 600, time.time())
    verdict = gate.decide_sync("/orders", [f"Bearer {rsa_key.token(jti='revoked-3')}"], IP)
    assert verdict.allow  # report-only: the request goes on ...
    assert verdict.token is None  # ... but without the revoked token


def test_global_report_only_never_attaches_a_revoked_token_lacking_a_scope(
    rsa_key: SigningKey,
) -> None:
    settings = Settings(
        algorithms=[rsa_key.alg],
        public_key=rsa_key.public_pem,
        mode="report-only",
        path_scopes={"/orders": ["orders:write"]},
        abuse_detection=True,
    )
    gate = Gate(settings)
    assert gate.guard is not None
    gate.guard.store.revoke_jti("revoked-4", time.time() + 600, time.time())
    verdict = gate.decide_sync("/orders", [f"Bearer {rsa_key.token(jti='revoked-4')}"], IP)
    assert verdict.allow
    assert verdict.token is None


# -- 2. method rules are matched case-sensitively; Django and werkzeug route upper-cased --


def test_method_rule_matches_a_lower_case_method_as_the_app_routes_it() -> None:
    """``post /orders`` is routed as POST by Django (``.upper()``) and werkzeug/Flask."""
    policy = PathPolicy(
        Settings(algorithms=["HS256"], secret="s" * 32, path_scopes={"POST /orders": ["w"]})
    )
    assert policy.rule("/orders", "POST") == ("required", ("w",))
    assert policy.rule("/orders", "post") == ("required", ("w",))


def test_flask_post_route_with_a_lower_case_method_needs_the_post_rule_scope(
    rsa_key: SigningKey,
) -> None:
    flask = Flask(__name__)

    @flask.post("/orders")
    def create() -> dict[str, str]:
        return {"created": "yes"}

    wrapped = JWTAuditWSGIMiddleware(
        flask.wsgi_app,
        algorithms=[rsa_key.alg],
        public_key=rsa_key.public_pem,
        path_scopes={"POST /orders": ["orders:write"]},
    )
    environ = EnvironBuilder(
        path="/orders",
        method="POST",
        headers={"Authorization": f"Bearer {rsa_key.token(scope='orders:read')}"},
    ).get_environ()
    assert run_wsgi_app(wrapped, dict(environ))[1].startswith("403")  # upper case: refused
    environ["REQUEST_METHOD"] = "post"  # what wsgiref / werkzeug's dev server pass on as is
    body, status, _ = run_wsgi_app(wrapped, environ)
    assert status.startswith("403"), (status, b"".join(body))


# -- 3. a path_scopes key with a space loses its rule ------------------------------------


def test_path_scopes_key_with_a_space_keeps_its_scopes() -> None:
    """PathPolicy splits path_scopes keys with rpartition(' '): '/my docs' becomes method '/my'."""
    policy = PathPolicy(
        Settings(algorithms=["HS256"], secret="s" * 32, path_scopes={"/my docs": ["admin"]})
    )
    assert policy.rule("/my docs", "GET") == ("required", ("admin",))
    policy = PathPolicy(
        Settings(algorithms=["HS256"], secret="s" * 32, path_scopes={"GET /my docs": ["admin"]})
    )
    assert policy.rule("/my docs/x", "GET") == ("required", ("admin",))


# -- 4. a HEAD rule is accepted and never matches -----------------------------------------


def test_a_head_rule_is_refused_or_applies() -> None:
    """'HEAD /x' passes Settings but _rule_method() maps every HEAD to GET: dead rule."""
    try:
        settings = Settings(
            algorithms=["HS256"], secret="s" * 32, path_scopes={"HEAD /reports": ["admin"]}
        )
    except ConfigurationError:
        return  # refused at start-up: fine
    assert PathPolicy(settings).rule("/reports", "HEAD") == ("required", ("admin",))


# -- 5. the Redis password in repr(Settings); a bad state_url is not a ConfigurationError --


def test_settings_repr_never_shows_the_state_url_password() -> None:
    settings = Settings(
        algorithms=["HS256"], secret="s" * 32, state_url="redis://:hunter2pw@localhost:6379/0"
    )
    assert "hunter2pw" not in repr(settings)
    assert "hunter2pw" not in str(settings)


def test_an_unusable_state_url_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigurationError, match="state_url"):
        JWTAuditWSGIMiddleware(
            lambda environ, start_response: [],
            algorithms=["HS256"],
            secret="s" * 32,
            state_url="redis://:pw@localhost:notaport/0",
        )


# -- 6. the Guard's mirror: check-then-delete across threads ------------------------------


class _TakenByAnotherThread(dict):  # type: ignore[type-arg]
    """A dict whose entry another thread deletes right after this thread read it."""

    def get(self, key: Any, default: Any = None) -> Any:
        value = super().get(key, default)
        self.pop(key, None)  # the other request thread's ``del mirror[ip]`` runs now
        return value


def test_a_lockout_trust_expiring_under_two_threads_is_not_an_internal_error(
    rsa_key: SigningKey,
) -> None:
    """Guard.locked(): ``mirror.get(ip)`` ... ``del mirror[ip]`` raises KeyError in the
    second of two threads that both saw the expired entry: the request is a 500
    internal_error (logged with a traceback) instead of being decided.
    ``mirror.pop(ip, None)`` is the fix."""
    gate = Gate(
        Settings(
            algorithms=[rsa_key.alg],
            public_key=rsa_key.public_pem,
            abuse_detection={"lockout_seconds": 60},
        )
    )
    guard = gate.guard
    assert guard is not None
    past = time.time() - 1
    guard.mirror = _TakenByAnotherThread({IP: (past, past)})  # trust ended: ask the store
    verdict = gate.decide_sync("/orders", [f"Bearer {rsa_key.token()}"], IP)
    assert verdict.reason != "internal_error"
    assert verdict.allow


# -- 7. clients without an address share one lockout --------------------------------------


@pytest.mark.anyio
async def test_clients_without_an_address_are_not_locked_out_together(
    rsa_key: SigningKey, other_rsa_key: SigningKey
) -> None:
    """No peer (a unix socket: scope['client'] is None) makes client_ip 'unknown', a
    placeholder, yet the Guard counts and locks it like an address: a few forged tokens
    from anyone lock out every client of that socket (a denial of service)."""
    target = asgi_app(rsa_key, abuse_detection={"denials_per_ip": 3, "lockout_seconds": 60})
    for _ in range(3):
        await call(target, other_rsa_key.token(), ip=None)
    response = await call(target, rsa_key.token(sub="bob"), ip=None)  # someone else
    assert response.status == 200, (response.status, response.headers)


# -- 8. hot path: report-only stopped sharing token-less denials --------------------------


def test_report_only_shares_the_missing_token_verdict_again() -> None:
    """Gate.deny() now requires ``not report`` to share a denial, so mode=report-only
    (where every token-less request would-denies) builds a Verdict and its event base
    per request again; the report flag is fixed per reason for these denials, so keying
    the shared dict by it (or dropping the condition) keeps one verdict."""
    gate = Gate(Settings(algorithms=["HS256"], secret="s" * 32, mode="report-only"))
    first = gate.decide("/orders", [])
    assert first.reason == "missing_token"
    assert gate.decide("/orders", []) is first
