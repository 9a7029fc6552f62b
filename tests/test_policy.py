"""The decision table, once, against the core: paths, scopes, optional, report-only, revocation.

Every adapter asks ``Gate.decide`` (and ``settle_sync`` / ``settle_async``) with the path the
app routes on; what they do with the verdict is tested per framework.
"""

from __future__ import annotations

from typing import Any

import pytest

from jwt_audit_middleware import ConfigurationError, Settings
from jwt_audit_middleware.asgi import route_path
from jwt_audit_middleware.errors import Denied
from jwt_audit_middleware.policy import Gate
from jwt_audit_middleware.testing import SigningKey


def gate(key: SigningKey, **options: Any) -> Gate:
    return Gate(Settings(**key.options(**options)))


def bearer(token: str | None) -> list[str]:
    return [] if token is None else [f"Bearer {token}"]


def decide(g: Gate, path: str, token: str | None) -> tuple[bool, str | None, int | None]:
    verdict = g.decide_sync(path, bearer(token))
    return verdict.allow, verdict.reason, verdict.status


ALLOWED = (True, None, None)
MISSING = (False, "missing_token", 401)
SCOPE = (False, "insufficient_scope", 403)


# -- path_scopes: the longest prefix wins, "/" is the rule for every path ------------


@pytest.mark.parametrize(
    ("path", "scopes", "expected"),
    [
        ("/orders", "", SCOPE),  # the "/" rule covers a path no longer prefix claims
        ("/orders", "api", ALLOWED),
        ("/", "api", ALLOWED),
        ("/admin", "api", SCOPE),  # the longer prefix wins: api is not enough
        ("/admin/users", "admin", ALLOWED),  # ... and admin alone is
        ("/adminx", "api", ALLOWED),  # segment boundary: /adminx is under "/", not /admin
        ("/public/page", "", ALLOWED),  # an empty list carves a prefix out of "/"
    ],
)
def test_longest_prefix_wins_and_root_is_the_default(
    rsa_key: SigningKey, path: str, scopes: str, expected: tuple[object, ...]
) -> None:
    g = gate(rsa_key, path_scopes={"/": ["api"], "/admin": ["admin"], "/public": []})
    assert decide(g, path, rsa_key.token(scope=scopes)) == expected


def test_scoped_paths_need_the_scopes_of_both_forms_of_a_dotted_path(
    rsa_key: SigningKey,
) -> None:
    g = gate(rsa_key, path_scopes={"/admin": ["admin"], "/reports": ["read"]})
    token = rsa_key.token(scope="read")
    assert decide(g, "/reports/../admin", token) == SCOPE
    assert decide(g, "/reports/../admin", rsa_key.token(scope="read admin")) == ALLOWED


# -- exempt and optional -----------------------------------------------------------------


def test_exempt_root_is_the_root_page_only(rsa_key: SigningKey) -> None:
    g = gate(rsa_key, exempt_paths=["/", "/health"])
    assert decide(g, "/", None) == ALLOWED
    assert decide(g, "/health", None) == ALLOWED
    assert decide(g, "/health/live", None) == ALLOWED
    assert decide(g, "/healthz", None) == MISSING
    assert decide(g, "/orders", None) == MISSING
    assert decide(g, "/health/../orders", None) == MISSING  # never exempt once normalised


def test_exempt_wins_over_a_root_scope_rule(rsa_key: SigningKey) -> None:
    g = gate(rsa_key, exempt_paths=["/health"], path_scopes={"/": ["api"]})
    assert decide(g, "/health", None) == ALLOWED


def test_a_path_both_optional_and_scoped_needs_a_token(rsa_key: SigningKey) -> None:
    g = gate(rsa_key, optional_paths=["/api"], path_scopes={"/api/admin": ["admin"]})
    assert decide(g, "/api/admin", None) == MISSING  # was 200: anonymous into the admin view
    assert decide(g, "/api/admin", rsa_key.token(scope="read")) == SCOPE
    assert decide(g, "/api/admin", rsa_key.token(scope="admin")) == ALLOWED
    assert decide(g, "/api/public", None) == ALLOWED  # optional and not scoped: anonymous
    verdict = g.decide_sync("/api/public", [])
    assert (verdict.token, verdict.path_kind) == (None, "optional")


def test_optional_under_a_root_scope_rule_needs_a_token_unless_carved_out(
    rsa_key: SigningKey,
) -> None:
    g = gate(rsa_key, optional_paths=["/api", "/docs"], path_scopes={"/": ["api"], "/docs": []})
    assert decide(g, "/api/items", None) == MISSING
    assert decide(g, "/docs", None) == ALLOWED


def test_optional_path_with_a_bad_token_is_denied(rsa_key: SigningKey) -> None:
    g = gate(rsa_key, optional_paths=["/api"])
    assert decide(g, "/api/x", "not.a.token")[:2] == (False, "malformed_token")


# -- report-only and revocation ------------------------------------------------------------


def test_report_only_would_deny_and_lets_through(rsa_key: SigningKey) -> None:
    g = gate(rsa_key, mode="report-only", path_scopes={"/admin": ["admin"]})
    missing = g.decide_sync("/orders", [])
    assert (missing.allow, missing.outcome, missing.reason) == (True, "would_deny", "missing_token")
    scoped = g.decide_sync("/admin", bearer(rsa_key.token(scope="read")))
    assert (scoped.allow, scoped.outcome, scoped.reason) == (
        True,
        "would_deny",
        "insufficient_scope",
    )
    assert scoped.token is not None  # the would-be-denied token still reaches the app


def test_revocation_hook_sync_and_async(rsa_key: SigningKey) -> None:
    revoked = {"jti-1"}

    def check(claims: dict[str, Any]) -> bool:
        return claims.get("jti") in revoked

    async def acheck(claims: dict[str, Any]) -> bool:
        return claims.get("jti") in revoked

    for hook in (check, acheck):
        g = gate(rsa_key, revocation_check=hook)
        bad = g.decide_sync("/", bearer(rsa_key.token(jti="jti-1", sub="mallory")))
        assert (bad.allow, bad.reason, bad.token) == (False, "revoked", None)
        assert bad.event_base["subject"] == "mallory"  # verified claims reach the event
        assert decide(g, "/", rsa_key.token(jti="jti-2")) == ALLOWED


def test_report_only_revoked_token_is_never_attached(rsa_key: SigningKey) -> None:
    g = gate(rsa_key, mode="report-only", revocation_check=lambda claims: True)
    verdict = g.decide_sync("/", bearer(rsa_key.token()))
    assert (verdict.allow, verdict.outcome, verdict.reason) == (True, "would_deny", "revoked")
    assert verdict.token is None


def test_a_failing_revocation_hook_fails_closed(rsa_key: SigningKey) -> None:
    def broken(claims: dict[str, Any]) -> bool:
        raise RuntimeError("database down")

    g = gate(rsa_key, revocation_check=broken)
    assert decide(g, "/", rsa_key.token()) == (False, "internal_error", 500)


@pytest.mark.anyio
async def test_settle_async_matches_decide_sync(rsa_key: SigningKey) -> None:
    hook = {"revoked"}.__contains__
    g = gate(rsa_key, revocation_check=lambda claims: hook(claims["sub"]))
    for sub in ("alice", "revoked"):
        headers = bearer(rsa_key.token(sub=sub))
        sync = g.decide_sync("/", headers)
        unsettled = g.decide("/", headers)
        assert unsettled.unsettled
        asynchronous = await g.settle_async(unsettled, "/", headers)
        assert (sync.allow, sync.reason) == (asynchronous.allow, asynchronous.reason)


# -- settings of the path rules --------------------------------------------------------


def test_identity_template_must_name_claims(rsa_key: SigningKey) -> None:
    with pytest.raises(ConfigurationError, match="identity"):
        Settings(**rsa_key.options(identity="static"))
    with pytest.raises(ConfigurationError, match="identity"):
        Settings(**rsa_key.options(identity="{sub!r}"))


# -- the path the app routes on (ASGI) --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/orders", "", ("/orders", "/orders")),
        ("/api/admin", "/api", ("/admin", "/api/admin")),  # uvicorn --root-path, Mount
        ("/api", "/api", ("/", "/api")),
        ("/apix/admin", "/api", ("/apix/admin", "/apix/admin")),  # not under the mount
        ("/admin", "/api", ("/admin", "/api/admin")),  # a server leaving root_path out of path
    ],
)
def test_route_path(path: str, root_path: str, expected: tuple[str, str]) -> None:
    assert route_path({"path": path, "root_path": root_path}) == expected


def test_report_only_scope_denial_still_runs_the_revocation_hook(rsa_key: SigningKey) -> None:
    # found in review: the would-be insufficient_scope attached a revoked token
    checked: list[str] = []

    def hook(claims: dict[str, Any]) -> bool:
        checked.append(claims["sub"])
        return True

    g = gate(rsa_key, mode="report-only", revocation_check=hook, path_scopes={"/admin": ["a"]})
    verdict = g.decide_sync("/admin", bearer(rsa_key.token(sub="mallory", scope="read")))
    assert checked == ["mallory"]
    assert (verdict.outcome, verdict.reason, verdict.token) == ("would_deny", "revoked", None)


def test_a_flood_of_missing_tokens_shares_one_verdict(rsa_key: SigningKey) -> None:
    g = gate(rsa_key)
    first, second = g.decide_sync("/a", []), g.decide_sync("/b", [])
    assert first is second
    assert first.reason == "missing_token"


def test_a_failing_key_refetch_fails_closed(rsa_key: SigningKey) -> None:
    def broken_refetch() -> object:
        raise RuntimeError("a bug in the key source")

    g = gate(rsa_key)
    pending = g.deny(Denied("unknown_key", "no key"), None, refresh_keys=broken_refetch)
    assert pending.unsettled
    settled = g.settle_sync(pending, "/", [])
    assert (settled.allow, settled.reason, settled.status) == (False, "internal_error", 500)


# -- method-aware rules: "GET /orders" (issue 13 item 7) ------------------------------------


def decide_method(
    g: Gate, method: str, path: str, token: str | None
) -> tuple[bool, str | None, int | None]:
    verdict = g.decide_sync(path, bearer(token), None, False, method)
    return verdict.allow, verdict.reason, verdict.status


@pytest.mark.parametrize(
    ("method", "scopes", "expected"),
    [
        ("GET", "orders:read", ALLOWED),
        ("HEAD", "orders:read", ALLOWED),  # HEAD is answered by the GET route: GET's rule
        ("HEAD", "", SCOPE),  # ... so it cannot dodge it either
        ("POST", "orders:read", SCOPE),
        ("POST", "orders:write", ALLOWED),
        ("DELETE", "orders:read", SCOPE),  # no rule of its own: the method-less one
        ("DELETE", "admin", ALLOWED),
    ],
)
def test_a_method_rule_beats_a_method_less_one_of_the_same_prefix(
    rsa_key: SigningKey, method: str, scopes: str, expected: tuple[object, ...]
) -> None:
    g = gate(
        rsa_key,
        path_scopes={
            "/orders": ["admin"],
            "GET /orders": ["orders:read"],
            "post /orders": ["orders:write"],  # the method's case does not matter
        },
    )
    assert decide_method(g, method, "/orders/42", rsa_key.token(scope=scopes)) == expected


def test_the_longest_prefix_still_wins_over_a_method_rule(rsa_key: SigningKey) -> None:
    g = gate(rsa_key, path_scopes={"GET /": ["api"], "/orders/public": []})
    assert decide_method(g, "GET", "/orders/public/1", rsa_key.token(scope="")) == ALLOWED
    assert decide_method(g, "GET", "/orders/1", rsa_key.token(scope="")) == SCOPE


def test_exempt_and_optional_paths_take_a_method_too(rsa_key: SigningKey) -> None:
    g = gate(rsa_key, exempt_paths=["GET /docs"], optional_paths=["GET /catalogue"])
    assert decide_method(g, "GET", "/docs", None) == ALLOWED
    assert decide_method(g, "HEAD", "/docs/openapi.json", None) == ALLOWED
    assert decide_method(g, "POST", "/docs", None) == MISSING
    assert decide_method(g, "GET", "/catalogue", None) == ALLOWED
    assert decide_method(g, "PUT", "/catalogue", None) == MISSING


@pytest.mark.parametrize("rule", ["orders", "GET orders", "GET", "G3T /orders"])
def test_a_rule_is_a_path_or_a_method_and_a_path(rsa_key: SigningKey, rule: str) -> None:
    with pytest.raises(ConfigurationError, match="METHOD /path"):
        gate(rsa_key, exempt_paths=[rule])
    with pytest.raises(ConfigurationError, match="METHOD /path"):
        gate(rsa_key, path_scopes={rule: ["x"]})
