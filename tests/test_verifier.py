"""Verifier: one parametrised row per reason code, then valid tokens of every algorithm."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from jwt_audit_middleware import Settings, jws
from jwt_audit_middleware import verifier as verifier_module
from jwt_audit_middleware.errors import Denied
from jwt_audit_middleware.events import REASONS, fingerprint, scope_fields
from jwt_audit_middleware.testing import SigningKey, jwks_document
from jwt_audit_middleware.verifier import (
    PYJWT_REASONS,
    VerifiedToken,
    Verifier,
    reason_for,
)

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes | str | dict[str, Any] | list[Any]) -> str:
    if isinstance(data, (dict, list)):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**more: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 300, **more}


def hs256_token(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An HS256 token made by hand (PyJWT refuses a PEM as an HMAC secret)."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def signed_raw(key: SigningKey, payload: bytes) -> str:
    """A validly signed JWS over arbitrary payload bytes."""
    return jwt.api_jws.encode(payload, key.private, algorithm=key.alg, headers={"kid": key.kid})


def non_canonical(token: str) -> str:
    """Same signature bytes, different base64url text (unused low bits set)."""
    head, signature = token.rsplit(".", 1)
    last = B64_ALPHABET.index(signature[-1])
    flipped = signature[:-1] + B64_ALPHABET[last ^ 1]
    assert base64.urlsafe_b64decode(flipped + "==") == base64.urlsafe_b64decode(signature + "==")
    return f"{head}.{flipped}"


@dataclass
class Ctx:
    """What a table row needs to build its settings and its Authorization values."""

    rsa: SigningKey
    other_rsa: SigningKey
    keys: dict[str, SigningKey]

    def rs256(self, **extra: Any) -> dict[str, Any]:
        return {"algorithms": ["RS256"], "jwks": jwks_document(self.rsa), **extra}

    def good(self, **claims_: Any) -> str:
        return self.rsa.token(**claims_)


Row = Callable[[Ctx], tuple[dict[str, Any], list[str]]]


def bearer(token: str) -> list[str]:
    return [f"Bearer {token}"]


def default(values: Callable[[Ctx], list[str]]) -> Row:
    return lambda c: (c.rs256(), values(c))


NONE_HEADER = b64({"alg": "none", "typ": "JWT"})
PAYLOAD = b64({"sub": "mallory", "exp": 4102444800})
DUPLICATE_HEADER = b64('{"alg":"RS256","alg":"HS256"}')
NON_UTF8_HEADER = b64(b'\xff\xfe{"alg":"RS256"}')

#: (id, row, expected reason or None for "verifies", Denied.claims expected set)
TABLE: list[tuple[str, Row, str | None, bool]] = [
    # -- Authorization header syntax ------------------------------------------
    ("ok", default(lambda c: bearer(c.good())), None, False),
    ("scheme-case-insensitive", default(lambda c: [f"bEaReR {c.good()}"]), None, False),
    ("missing-token", default(lambda c: []), "missing_token", False),
    (
        "several-headers",
        default(lambda c: [*bearer(c.good()), *bearer(c.good())]),
        "invalid_request",
        False,
    ),
    ("empty-token", default(lambda c: ["Bearer"]), "invalid_request", False),
    ("empty-token-space", default(lambda c: ["Bearer "]), "invalid_request", False),
    ("tab-after-scheme", default(lambda c: [f"Bearer\t{c.good()}"]), "invalid_request", False),
    ("no-space", default(lambda c: [f"Bearer{c.good()}"]), "invalid_request", False),
    ("no-space-short", default(lambda c: ["Bearerabc"]), "invalid_request", False),
    ("char-plus", default(lambda c: bearer("abc+def.ghi.jkl")), "invalid_request", False),
    ("char-slash", default(lambda c: bearer("abc/def.ghi.jkl")), "invalid_request", False),
    ("char-equals", default(lambda c: bearer(c.good() + "=")), "invalid_request", False),
    ("char-comma", default(lambda c: bearer("abc,def.ghi.jkl")), "invalid_request", False),
    ("char-space-inside", default(lambda c: bearer("abc def.ghi")), "invalid_request", False),
    ("basic-scheme", default(lambda c: ["Basic xyz"]), "unsupported_scheme", False),
    ("longer-scheme", default(lambda c: ["Bearers x"]), "unsupported_scheme", False),
    (
        "token-too-large",
        lambda c: (c.rs256(max_token_bytes=128), bearer(c.good())),
        "token_too_large",
        False,
    ),
    (
        "token-over-limit",
        lambda c: (c.rs256(max_token_bytes=128), bearer("a" * 129)),
        "token_too_large",
        False,
    ),
    (
        "header-too-large",
        default(lambda c: bearer("a" * 9000)),
        "token_too_large",
        False,
    ),
    # -- compact serialisation -------------------------------------------------
    (
        "two-segments",
        default(lambda c: bearer(f"{NONE_HEADER}.{PAYLOAD}")),
        "malformed_token",
        False,
    ),
    (
        "four-segments",
        default(lambda c: bearer(c.good() + ".c2ln")),
        "malformed_token",
        False,
    ),
    (
        # the most famous JWT attack is named as such in the trail (it was
        # malformed_token, hiding it from the audit and from explain)
        "empty-signature-alg-none",
        default(lambda c: bearer(f"{NONE_HEADER}.{PAYLOAD}.")),
        "algorithm_not_allowed",
        False,
    ),
    (
        "empty-signature-allowed-alg",
        default(lambda c: bearer(c.rsa.token().rsplit(".", 1)[0] + ".")),
        "malformed_token",
        False,
    ),
    (
        "bad-base64-length",
        default(lambda c: bearer(f"abcde.{PAYLOAD}.c2lnbmF0dXJl")),
        "malformed_token",
        False,
    ),
    (
        "header-not-json",
        default(lambda c: bearer(f"{b64('not json')}.{PAYLOAD}.c2lnbmF0dXJl")),
        "malformed_token",
        False,
    ),
    (
        "header-json-array",
        default(lambda c: bearer(f"{b64(['RS256'])}.{PAYLOAD}.c2lnbmF0dXJl")),
        "malformed_token",
        False,
    ),
    (
        "header-duplicate-member",
        default(lambda c: bearer(f"{DUPLICATE_HEADER}.{PAYLOAD}.c2lnbmF0dXJl")),
        "malformed_token",
        False,
    ),
    (
        "header-not-utf8",
        default(lambda c: bearer(f"{NON_UTF8_HEADER}.{PAYLOAD}.c2lnbmF0dXJl")),
        "malformed_token",
        False,
    ),
    (
        "header-without-alg",
        default(lambda c: bearer(f"{b64({'typ': 'JWT'})}.{PAYLOAD}.c2lnbmF0dXJl")),
        "malformed_token",
        False,
    ),
    (
        "kid-not-a-string",
        default(lambda c: bearer(f"{b64({'alg': 'RS256', 'kid': 7})}.{PAYLOAD}.c2lnbmF0dXJl")),
        "malformed_token",
        False,
    ),
    (
        "crit-header",
        default(lambda c: bearer(c.rsa.token(headers={"crit": ["exp"], "exp": 1}))),
        "malformed_token",
        False,
    ),
    (
        "non-canonical-signature",
        default(lambda c: bearer(non_canonical(c.good()))),
        "malformed_token",
        False,
    ),
    (
        "payload-duplicate-member-signed",
        default(lambda c: bearer(signed_raw(c.rsa, b'{"sub":"a","sub":"b","exp":4102444800}'))),
        "malformed_token",
        False,
    ),
    (
        "payload-json-array-signed",
        default(lambda c: bearer(signed_raw(c.rsa, b'["sub"]'))),
        "malformed_token",
        False,
    ),
    ("exp-string", default(lambda c: bearer(c.good(exp="4102444800"))), "malformed_token", True),
    ("exp-bool", default(lambda c: bearer(c.good(exp=True))), "malformed_token", True),
    ("nbf-string", default(lambda c: bearer(c.good(nbf="0"))), "malformed_token", True),
    ("sub-not-string", default(lambda c: bearer(c.good(sub=12345))), "malformed_token", True),
    ("aud-not-strings", default(lambda c: bearer(c.good(aud=[1, 2]))), "malformed_token", True),
    # -- algorithm -------------------------------------------------------------
    (
        "alg-none",
        default(lambda c: bearer(f"{NONE_HEADER}.{PAYLOAD}.c2lnbmF0dXJl")),
        "algorithm_not_allowed",
        False,
    ),
    (
        "hs256-signed-with-rsa-public-pem",
        default(
            lambda c: bearer(
                hs256_token(
                    str(c.rsa.public_pem).encode(),
                    {"alg": "HS256", "typ": "JWT", "kid": "rs256-1"},
                    claims(sub="mallory"),
                )
            )
        ),
        "algorithm_not_allowed",
        False,
    ),
    (
        "es256-on-rs256-policy",
        default(lambda c: bearer(c.keys["ES256"].token())),
        "algorithm_not_allowed",
        False,
    ),
    # -- keys and signature ----------------------------------------------------
    (
        "unknown-kid",
        default(lambda c: bearer(c.rsa.token(headers={"kid": "nope"}))),
        "unknown_key",
        False,
    ),
    (
        "forged-same-kid",
        default(lambda c: bearer(c.other_rsa.token(sub="mallory"))),
        "bad_signature",
        False,
    ),
    (
        "tampered-payload",
        default(
            lambda c: bearer(
                ".".join(
                    (
                        c.good().split(".")[0],
                        b64(claims(sub="admin")),
                        c.good().split(".")[2],
                    )
                )
            )
        ),
        "bad_signature",
        False,
    ),
    (
        "hs256-with-rsa-pem-when-both-allowed",
        lambda c: (
            {
                "algorithms": ["RS256", "HS256"],
                "public_key": c.rsa.public_pem,
                "secret": c.keys["HS256"].secret,
            },
            bearer(
                hs256_token(
                    str(c.rsa.public_pem).encode(),
                    {"alg": "HS256", "typ": "JWT"},
                    claims(sub="mallory"),
                )
            ),
        ),
        "bad_signature",
        False,
    ),
    # -- time ------------------------------------------------------------------
    ("expired", default(lambda c: bearer(c.rsa.token(expires_in=-60))), "expired", True),
    (
        "expired-within-leeway",
        lambda c: (c.rs256(leeway=60), bearer(c.rsa.token(expires_in=-5))),
        None,
        False,
    ),
    (
        "nbf-in-future",
        default(lambda c: bearer(c.good(nbf=int(time.time()) + 3600))),
        "not_yet_valid",
        True,
    ),
    (
        "iat-in-future",
        default(lambda c: bearer(c.good(iat=int(time.time()) + 3600))),
        "not_yet_valid",
        True,
    ),
    (
        "nbf-within-leeway",
        lambda c: (c.rs256(leeway=60), bearer(c.good(nbf=int(time.time()) + 10))),
        None,
        False,
    ),
    # -- issuer, audience, required claims, typ ---------------------------------
    (
        "wrong-issuer",
        lambda c: (
            c.rs256(issuer="https://issuer.example"),
            bearer(c.good(iss="https://evil.example")),
        ),
        "invalid_issuer",
        True,
    ),
    (
        "issuer-ok",
        lambda c: (
            c.rs256(issuer=["https://a.example", "https://issuer.example"]),
            bearer(c.good(iss="https://issuer.example")),
        ),
        None,
        False,
    ),
    (
        "iss-missing-when-issuer-configured",
        lambda c: (c.rs256(issuer="https://issuer.example"), bearer(c.good())),
        "missing_claim",
        True,
    ),
    ("exp-missing", default(lambda c: bearer(c.rsa.token(expires_in=None))), "missing_claim", True),
    (
        "exp-not-required",
        lambda c: (c.rs256(required_claims=[]), bearer(c.rsa.token(expires_in=None))),
        None,
        False,
    ),
    (
        "custom-required-claim",
        lambda c: (c.rs256(required_claims=["exp", "tenant"]), bearer(c.good())),
        "missing_claim",
        True,
    ),
    (
        "aud-missing-when-audience-configured",
        lambda c: (c.rs256(audience="api"), bearer(c.good())),
        "missing_claim",
        True,
    ),
    (
        "wrong-audience",
        lambda c: (c.rs256(audience="api"), bearer(c.good(aud="other"))),
        "invalid_audience",
        True,
    ),
    (
        "wrong-audience-list",
        lambda c: (c.rs256(audience=["api"]), bearer(c.good(aud=["x", "y"]))),
        "invalid_audience",
        True,
    ),
    (
        "aud-but-no-audience-configured",
        default(lambda c: bearer(c.good(aud="api"))),
        "invalid_audience",
        True,
    ),
    (
        "audience-in-list",
        lambda c: (c.rs256(audience="api"), bearer(c.good(aud=["other", "api"]))),
        None,
        False,
    ),
    (
        "wrong-typ",
        lambda c: (c.rs256(token_type="at+jwt"), bearer(c.good())),
        "invalid_type",
        False,
    ),
    (
        "typ-application-at-jwt",
        lambda c: (
            c.rs256(token_type="at+jwt"),
            bearer(c.rsa.token(headers={"typ": "application/at+JWT"})),
        ),
        None,
        False,
    ),
    (
        "typ-upper-case",
        lambda c: (c.rs256(token_type="at+jwt"), bearer(c.rsa.token(headers={"typ": "AT+JWT"}))),
        None,
        False,
    ),
]


@pytest.fixture(scope="module")
def ctx(keys: dict[str, SigningKey], rsa_key: SigningKey, other_rsa_key: SigningKey) -> Ctx:
    return Ctx(rsa=rsa_key, other_rsa=other_rsa_key, keys=keys)


def run(settings: Settings, values: list[str]) -> VerifiedToken:
    verifier = Verifier(settings)
    token = verifier.token_from_headers(values)
    return verifier.verify(token, fingerprint(token))


def test_every_verifier_reason_has_a_row() -> None:
    produced = {reason for _, _, reason, _ in TABLE if reason is not None}
    not_from_verifier = {
        "revoked",
        "insufficient_scope",
        "key_unavailable",
        "locked_out",
        "internal_error",
    }
    assert produced == set(REASONS) - not_from_verifier


@pytest.mark.parametrize(
    ("row", "reason", "has_claims"),
    [pytest.param(row, reason, has_claims, id=name) for name, row, reason, has_claims in TABLE],
)
def test_reason_table(ctx: Ctx, row: Row, reason: str | None, has_claims: bool) -> None:
    options, values = row(ctx)
    settings = Settings(**options)
    if reason is None:
        verified = run(settings, values)
        assert isinstance(verified, VerifiedToken)
        assert verified.subject == "alice"
        assert verified.alg == "RS256"
        return
    with pytest.raises(Denied) as info:
        run(settings, values)
    denied = info.value
    assert denied.reason == reason
    assert denied.reason in REASONS
    assert isinstance(denied.detail, str)
    assert denied.detail
    if has_claims:
        assert isinstance(denied.claims, dict)
        assert "sub" in denied.claims
    else:
        assert denied.claims is None
    for value in values:  # the detail never echoes token text
        token_text = value.rpartition(" ")[2]
        for part in token_text.split("."):
            if len(part) >= 8:
                assert part not in denied.detail
                assert part not in str(denied)


def test_alg_of_a_refused_token_is_capped(ctx: Ctx) -> None:
    header = b64({"alg": "X" * 5000})
    settings = Settings(**ctx.rs256())
    with pytest.raises(Denied) as info:
        run(settings, bearer(f"{header}.{PAYLOAD}.c2lnbmF0dXJl"))
    assert info.value.reason == "algorithm_not_allowed"
    assert info.value.alg is not None
    assert len(info.value.alg) <= 32


def test_denied_carries_alg_and_kid_after_header_check(ctx: Ctx) -> None:
    settings = Settings(**ctx.rs256())
    with pytest.raises(Denied) as info:
        run(settings, bearer(ctx.other_rsa.token()))
    assert info.value.alg == "RS256"
    assert info.value.kid == "rs256-1"


def test_verifier_uses_its_clock(ctx: Ctx) -> None:
    token = ctx.rsa.token()
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    settings = Settings(**ctx.rs256())
    before = Verifier(settings, clock=lambda: exp - 1)
    assert before.verify(token, fingerprint(token)).expires_at == float(exp)
    at_expiry = Verifier(settings, clock=lambda: float(exp))
    with pytest.raises(Denied) as info:
        at_expiry.verify(token, fingerprint(token))
    assert info.value.reason == "expired"


def test_verify_checks_size_itself(ctx: Ctx) -> None:
    settings = Settings(**ctx.rs256(max_token_bytes=64))
    with pytest.raises(Denied) as info:
        Verifier(settings).verify("a" * 65, "sha256:0")
    assert info.value.reason == "token_too_large"


# -- valid tokens -------------------------------------------------------------

ALL_ALGS = ["HS256", "RS256", "ES256", "EdDSA", "PS256", "ES384"]


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_valid_token_verifies_for_every_algorithm(keys: dict[str, SigningKey], alg: str) -> None:
    key = keys[alg]
    token = key.token(sub=f"user-{alg}")
    for options in (key.options(), {"algorithms": [alg], "jwks": jwks_document(key)}):
        verified = Verifier(Settings(**options)).verify(token, fingerprint(token))
        assert verified.subject == f"user-{alg}"
        assert verified.alg == alg
        assert verified.kid == key.kid
        assert verified.fingerprint == fingerprint(token)


def test_mixed_algorithm_jwks(keys: dict[str, SigningKey]) -> None:
    settings = Settings(algorithms=ALL_ALGS, jwks=jwks_document(*keys.values()))
    verifier = Verifier(settings)
    for alg, key in keys.items():
        token = key.token(sub=alg)
        assert verifier.verify(token, fingerprint(token)).subject == alg


def test_verified_token_fields(rsa_key: SigningKey) -> None:
    settings = Settings(
        algorithms=["RS256"],
        jwks=jwks_document(rsa_key),
        issuer="https://issuer.example",
        audience="api",
    )
    token = rsa_key.token(
        sub="bob",
        iss="https://issuer.example",
        aud=["api", "other"],
        jti="token-1",
        scope="read write",
        scp=["admin"],
    )
    verified = Verifier(settings).verify(token, fingerprint(token))
    assert verified.subject == "bob"
    assert verified.issuer == "https://issuer.example"
    assert verified.token_id == "token-1"
    assert verified.audience == ("api", "other")
    assert verified.scopes == frozenset({"read", "write", "admin"})
    assert verified.claims["sub"] == "bob"
    assert verified.header["kid"] == "rs256-1"
    assert token not in repr(verified)


def test_single_audience_string_becomes_a_tuple(rsa_key: SigningKey) -> None:
    settings = Settings(algorithms=["RS256"], jwks=jwks_document(rsa_key), audience="api")
    token = rsa_key.token(aud="api")
    assert Verifier(settings).verify(token, fingerprint(token)).audience == ("api",)


def test_custom_scopes_claim(rsa_key: SigningKey) -> None:
    settings = Settings(
        algorithms=["RS256"], jwks=jwks_document(rsa_key), scopes_claim="permissions"
    )
    token = rsa_key.token(permissions=["orders:read", "orders:write", 5], scope="ignored")
    verified = Verifier(settings).verify(token, fingerprint(token))
    assert verified.scopes == frozenset({"orders:read", "orders:write"})


def test_no_scopes(rsa_key: SigningKey) -> None:
    settings = Settings(algorithms=["RS256"], jwks=jwks_document(rsa_key))
    token = rsa_key.token(sub="x")
    verified = Verifier(settings).verify(token, fingerprint(token))
    assert verified.scopes == frozenset()
    assert verified.issuer is None
    assert verified.audience == ()


# -- reason_for ----------------------------------------------------------------


@pytest.mark.parametrize("cls", list(PYJWT_REASONS), ids=lambda cls: cls.__name__)
def test_reason_for_maps_every_pyjwt_exception(cls: type[Exception]) -> None:
    exc = cls.__new__(cls)
    reason = reason_for(exc)
    assert reason == PYJWT_REASONS[cls]
    assert reason in REASONS


def test_reason_for_uses_the_mro() -> None:
    class Custom(jwt.ExpiredSignatureError):
        pass

    assert reason_for(Custom()) == "expired"
    assert reason_for(jwt.MissingRequiredClaimError("exp")) == "missing_claim"


def test_reason_for_unrelated_exception() -> None:
    assert reason_for(ValueError("x")) is None
    assert reason_for(KeyError("x")) is None


# -- known bugs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "reasons"),
    [
        ("exp", {"missing_claim", "malformed_token"}),
        ("nbf", {"malformed_token"}),
        ("iat", {"malformed_token"}),
    ],
)
def test_null_time_claim_is_denied(ctx: Ctx, claim: str, reasons: set[str]) -> None:
    token = ctx.good(**{claim: None})
    with pytest.raises(Denied) as info:
        run(Settings(**ctx.rs256()), bearer(token))
    assert info.value.reason in reasons
    assert info.value.claims is not None


NOW = 1_800_000_000

#: (settings beyond RS256 + JWKS, claims, reason, detail) of each claim check, in the
#: order the checks run (a token failing two gets the first one's denial)
CLAIM_DENIALS: list[tuple[dict[str, Any], dict[str, Any], str, str]] = [
    ({}, {"exp": None}, "missing_claim", "the token has no exp claim"),
    ({"required_claims": ["exp", "tenant"]}, {}, "missing_claim", "the token has no tenant claim"),
    ({}, {"iss": 1, "sub": 1}, "malformed_token", "the iss claim is not a string"),
    ({}, {"sub": None}, "malformed_token", "the sub claim is not a string"),
    ({}, {"jti": ["a"]}, "malformed_token", "the jti claim is not a string"),
    ({}, {"exp": "1", "nbf": "1"}, "malformed_token", "the exp claim is not a number"),
    ({}, {"exp": 2**63}, "malformed_token", "the exp claim is not a number"),
    ({}, {"exp": NOW, "nbf": "1"}, "expired", "the token has expired"),
    ({}, {"nbf": False}, "malformed_token", "the nbf claim is not a number"),
    ({}, {"iat": None}, "malformed_token", "the iat claim is not a number"),
    ({}, {"nbf": NOW + 1, "iat": "x"}, "not_yet_valid", "the token's nbf is in the future"),
    ({}, {"iat": NOW + 1}, "not_yet_valid", "the token's iat is in the future"),
    ({"issuer": "https://i"}, {"aud": 1}, "missing_claim", "the token has no iss claim"),
    (
        {"issuer": "https://i"},
        {"iss": "https://j"},
        "invalid_issuer",
        "the token's issuer is not accepted",
    ),
    ({}, {"aud": []}, "malformed_token", "the aud claim is not a string or a list of strings"),
    (
        {},
        {"aud": {"a": 1}},
        "malformed_token",
        "the aud claim is not a string or a list of strings",
    ),
    (
        {},
        {"aud": ["a", 1]},
        "malformed_token",
        "the aud claim is not a string or a list of strings",
    ),
    ({}, {"aud": "a"}, "invalid_audience", "the token has an audience but none is configured"),
    (
        {"audience": "a"},
        {"aud": ["b"]},
        "invalid_audience",
        "the token is not meant for this audience",
    ),
    ({"audience": "a"}, {"aud": None}, "missing_claim", "the token has no aud claim"),
]


@pytest.mark.parametrize(
    ("options", "extra", "reason", "detail"),
    [pytest.param(*row, id=f"{row[2]}-{index}") for index, row in enumerate(CLAIM_DENIALS)],
)
def test_each_claim_check_denies_with_its_reason_detail_alg_kid_and_claims(
    ctx: Ctx, options: dict[str, Any], extra: dict[str, Any], reason: str, detail: str
) -> None:
    payload = {"sub": "alice", "iat": NOW - 10, "exp": NOW + 300, **extra}
    token = signed_raw(ctx.rsa, json.dumps(payload).encode())  # PyJWT checks iss itself
    verifier = Verifier(Settings(**ctx.rs256(**options)), clock=lambda: float(NOW))
    with pytest.raises(Denied) as info:
        verifier.verify(token, fingerprint(token))
    denied = info.value
    assert (denied.reason, denied.detail) == (reason, detail)
    assert (denied.alg, denied.kid) == ("RS256", ctx.rsa.kid)
    assert denied.claims == payload


def test_huge_integer_exp_is_a_verdict_not_a_crash(ctx: Ctx) -> None:
    token = ctx.good(exp=10**400)
    outcome: object
    try:
        outcome = run(Settings(**ctx.rs256()), bearer(token))
    except Denied as denied:
        outcome = denied.reason
    assert outcome == "malformed_token" or (
        isinstance(outcome, VerifiedToken) and outcome.subject == "alice"
    )


def test_verified_claims_are_read_only_but_serialise_like_a_dict(rsa_key: SigningKey) -> None:
    import copy
    import pickle

    verifier = Verifier(Settings(**rsa_key.options(log_claims=["tenant"])))
    token = rsa_key.token(tenant="acme", roles=["a"])
    verified = verifier.verify(token, fingerprint(token))
    claims = verified.claims
    for mutate in (
        lambda: claims.__setitem__("sub", "admin"),
        lambda: claims.update(sub="admin"),
        lambda: claims.setdefault("tenant2", "x"),
        lambda: claims.pop("sub"),
        claims.clear,
    ):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    assert claims["sub"] == "alice"
    assert json.loads(json.dumps(claims))["tenant"] == "acme"
    assert pickle.loads(pickle.dumps(claims)) == claims
    assert copy.deepcopy(claims) == claims
    private = dict(claims)
    private["sub"] = "mine"
    assert claims["sub"] == "alice"
    # the logged claims were fixed when the token verified
    assert verified.event_fields["claims"] == {"tenant": "acme"}


def test_out_of_range_numbers_are_malformed(rsa_key: SigningKey) -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"RS256"}').rstrip(b"=").decode()
    for payload in (b'{"sub":"a","exp":1e999}', b'{"sub":"a","exp":4000000000,"x":-1e999}'):
        body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        signing_input = f"{header}.{body}".encode()
        signature = jwt.get_algorithm_by_name("RS256").sign(signing_input, rsa_key.private)
        token = f"{header}.{body}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        with pytest.raises(Denied) as denied:
            Verifier(Settings(**rsa_key.options())).verify(token, fingerprint(token))
        assert denied.value.reason == "malformed_token"


# -- the JWS as verify() reads it (the parsing itself: test_jws.py) ------------------


def test_the_parsing_keeps_its_old_names_here() -> None:
    """jws.py took the parsing (issue 11); what was imported from here still is."""
    assert verifier_module.extract_token is jws.extract_token
    assert verifier_module._b64decode is jws.b64decode
    assert verifier_module._signature_bytes is jws.signature_bytes
    assert verifier_module._decode_json is jws.decode_json
    assert verifier_module._json_object is jws.json_object


def test_non_canonical_signature_is_refused_before_the_signature_is_checked(ctx: Ctx) -> None:
    token = ctx.good()
    head, signature = token.rsplit(".", 1)
    verifier = Verifier(Settings(**ctx.rs256()))
    for bad in (non_canonical(token), f"{token}=", f"{head}.{signature[:-1]}+", f"{token}AAA"):
        with pytest.raises(Denied) as info:
            verifier.verify(bad, "sha256:0")
        assert info.value.reason == "malformed_token"
        assert info.value.detail == "the signature is not canonical base64url"


@pytest.mark.parametrize("where", ["payload", "signature", "signature-start"])
def test_non_ascii_after_the_header_is_malformed_not_a_crash(ctx: Ctx, where: str) -> None:
    """verify() called directly (no extract_token) with a non-ASCII character."""
    head, payload, signature = ctx.good().split(".")
    if where == "payload":
        payload = payload[:-1] + "é"
    elif where == "signature":
        signature = signature[:-1] + "é"
    else:  # a canonical last character: the decoder itself meets the "é"
        signature = "é" + signature[1:]
    with pytest.raises(Denied) as info:
        Verifier(Settings(**ctx.rs256())).verify(f"{head}.{payload}.{signature}", "sha256:0")
    assert info.value.reason == "malformed_token"


@pytest.mark.parametrize(
    "token",
    ["a.b.c", "a.b", "a.b.c.d", ".b.c", "a..c", "a.b.", "..", "...", "abc", "", "a.b.c."],
)
def test_segment_splitting_matches_split(ctx: Ctx, token: str) -> None:
    parts = token.split(".")
    verifier = Verifier(Settings(**ctx.rs256()))
    with pytest.raises(Denied) as info:
        verifier.verify(token, "sha256:0")
    if len(parts) != 3 or not all(parts[:2]):
        assert info.value.detail == "a JWS has three segments"
    else:  # an empty signature is judged once the header is read
        assert info.value.detail != "a JWS has three segments"


# -- what is kept between tokens -------------------------------------------------


def test_a_decoded_header_is_reused_but_each_token_has_its_own_copy(rsa_key: SigningKey) -> None:
    verifier = Verifier(Settings(**rsa_key.options()))
    first_token, second_token = rsa_key.token(sub="a"), rsa_key.token(sub="b")
    assert first_token.split(".")[0] == second_token.split(".")[0]
    first = verifier.verify(first_token, fingerprint(first_token))
    first.header["alg"] = "none"  # an app scribbling on its token
    first.header["crit"] = ["exp"]
    second = verifier.verify(second_token, fingerprint(second_token))
    assert second.header == {"alg": "RS256", "typ": "JWT", "kid": "rs256-1"}
    assert second.header is not first.header
    assert second.alg == "RS256"


def test_a_reused_header_is_still_checked_against_the_policy(rsa_key: SigningKey) -> None:
    token = rsa_key.token()
    lenient = Verifier(Settings(**rsa_key.options()))
    lenient.verify(token, fingerprint(token))
    strict = Verifier(Settings(**rsa_key.options(token_type="at+jwt")))
    for _ in range(2):
        with pytest.raises(Denied) as info:
            strict.verify(token, fingerprint(token))
        assert info.value.reason == "invalid_type"


def test_kept_headers_are_bounded(rsa_key: SigningKey) -> None:
    verifier = Verifier(Settings(**rsa_key.options()))
    for number in range(300):  # a new header each time (the PEM key has no kid: all verify)
        token = rsa_key.token(headers={"kid": f"k{number}"})
        verifier.verify(token, fingerprint(token))
        assert 0 < len(verifier._headers) <= verifier_module._MAX_HEADERS


def test_headers_with_structured_values_are_not_kept(rsa_key: SigningKey) -> None:
    verifier = Verifier(Settings(**rsa_key.options()))
    token = rsa_key.token(headers={"x5c": ["abc"], "kid": "rs256-1"})
    first = verifier.verify(token, fingerprint(token))
    assert not verifier._headers
    first.header["x5c"].append("changed")
    again = verifier.verify(token, fingerprint(token))
    assert again.header["x5c"] == ["abc"]


def test_fast_verified_token_equals_the_dataclass_constructor(rsa_key: SigningKey) -> None:
    verifier = Verifier(Settings(**rsa_key.options(audience="api", log_claims=["tenant"])))
    token = rsa_key.token(aud=["api", "x"], scope="b a", tenant="t", iss="https://i")
    verified = verifier.verify(token, fingerprint(token))
    assert type(verified) is VerifiedToken
    rebuilt = VerifiedToken(
        **{f.name: getattr(verified, f.name) for f in dataclasses.fields(VerifiedToken)}
    )
    assert rebuilt == verified
    assert repr(rebuilt) == repr(verified)
    assert rebuilt.event_fields == verified.event_fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.subject = "admin"  # type: ignore[misc]
    assert not hasattr(verified, "__dict__")  # slots, like the dataclass's own


@pytest.mark.parametrize(
    "extra",
    [
        {"scope": "read write read"},
        {"scope": "  read\twrite\n"},
        {"scope": ""},
        {"scope": "a\x1bb c"},
        {"scope": "read", "scp": ["admin", 5]},
        {"scope": 5, "scp": ["admin"]},
        {"scp": "x y"},
        {},
    ],
)
def test_scopes_and_their_event_field_match_the_general_rule(
    rsa_key: SigningKey, extra: dict[str, Any]
) -> None:
    verifier = Verifier(Settings(**rsa_key.options()))
    for _ in range(2):  # the second time from what was kept
        token = rsa_key.token(**extra)
        verified = verifier.verify(token, fingerprint(token))
        assert verified.scopes == verifier.scopes(verified.claims)
        assert verified.event_fields["scopes"] == scope_fields(verified.scopes)


def test_tokens_sharing_a_scope_claim_do_not_share_their_identity_lists(
    rsa_key: SigningKey,
) -> None:
    verifier = Verifier(Settings(**rsa_key.options()))
    first_token, second_token = rsa_key.token(scope="a b"), rsa_key.token(scope="a b")
    first = verifier.verify(first_token, fingerprint(first_token))
    first.event_fields["scopes"].append("admin")
    second = verifier.verify(second_token, fingerprint(second_token))
    assert second.event_fields["scopes"] == ["a", "b"]
    assert second.scopes == frozenset({"a", "b"})


def test_kept_scope_claims_are_bounded(rsa_key: SigningKey) -> None:
    verifier = Verifier(Settings(**rsa_key.options()))
    for number in range(200):
        token = rsa_key.token(scope=f"s{number}")
        assert verifier.verify(token, fingerprint(token)).scopes == {f"s{number}"}
        assert 0 < len(verifier._scope_sets) <= verifier_module._MAX_SCOPE_SETS
    token = rsa_key.token(scope="x" * 5000)
    verifier.verify(token, fingerprint(token))
    assert "x" * 5000 not in verifier._scope_sets


# -- ECDSA malleability: (r, s) verifies as (r, n - s) too -------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ecdsa_low_s_keeps_one_signature_text_per_token(alg: str) -> None:
    from jwt_audit_middleware.verifier import _ECDSA_HALF_ORDERS

    key = SigningKey.generate(alg, kid="ec")
    token = key.token(jti="one-token")
    signing_input, signature_b64 = token.rsplit(".", 1)
    raw = base64.urlsafe_b64decode(signature_b64 + "=" * (-len(signature_b64) % 4))
    size = len(raw) // 2
    r, s = raw[:size], int.from_bytes(raw[size:], "big")
    flipped = r + (2 * _ECDSA_HALF_ORDERS[alg] + 1 - s).to_bytes(size, "big")  # n - s
    twin = signing_input + "." + base64.urlsafe_b64encode(flipped).rstrip(b"=").decode()

    default = Verifier(Settings(**key.options()))
    first, second = (default.verify(t, fingerprint(t)) for t in (token, twin))
    assert first.fingerprint != second.fingerprint  # the text differs ...
    assert first.token_id == second.token_id == "one-token"  # ... token_id correlates

    strict = Verifier(Settings(**key.options(ecdsa_low_s=True)))
    outcomes = []
    for text in (token, twin):
        try:
            strict.verify(text, fingerprint(text))
            outcomes.append("allowed")
        except Denied as denied:
            outcomes.append(denied.reason)
    assert sorted(outcomes) == ["allowed", "bad_signature"]  # only the low-S text
