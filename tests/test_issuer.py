"""TokenIssuer, login events, and the login examples (Flask, Django)."""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import assert_no_secret
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from jwt_audit_middleware import (
    AuditLogger,
    ConfigurationError,
    JSONFormatter,
    Settings,
    TokenIssuer,
)
from jwt_audit_middleware.policy import Gate
from jwt_audit_middleware.testing import CapturedEvents


def pem(key: object) -> str:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
def test_issued_tokens_verify_and_are_audited_without_the_token(
    alg: str, rsa_pem: str, events: CapturedEvents
) -> None:
    secret = os.urandom(32)
    if alg == "HS256":
        issuer = TokenIssuer(algorithm=alg, secret=secret, issuer="https://me/", audience="api")
        key_text = secret.hex()
    else:
        private = rsa_pem if alg == "RS256" else pem(ec.generate_private_key(ec.SECP256R1()))
        issuer = TokenIssuer(
            algorithm=alg, private_key=private, kid="k1", issuer="https://me/", audience="api"
        )
        key_text = private
    token = issuer.issue("alice", scope=["orders:read"], client_ip="192.0.2.1", request_id="r-1")
    verdict = Gate(Settings(**issuer.verify_options())).decide("/", ["Bearer " + token])
    assert verdict.reason is None
    assert verdict.token is not None
    claims = dict(verdict.token.claims)
    assert claims["sub"] == "alice"
    assert claims["iss"] == "https://me/"
    assert claims["aud"] == "api"
    assert claims["exp"] - claims["iat"] == 900
    assert claims["scope"] == "orders:read"
    event = events.only()
    assert event["event"] == "token_issued"
    assert event["outcome"] == "allowed"
    assert event["subject"] == "alice"
    assert event["token_id"] == claims["jti"]
    assert event["token_fingerprint"] == verdict.fingerprint
    assert event["claims"] == {"iat": claims["iat"], "exp": claims["exp"]}
    assert event["detail"].startswith("expires ")
    assert event["client_ip"] == "192.0.2.1"
    assert event["request_id"] == "r-1"
    assert event["alg"] == alg
    assert event["scopes"] == ["orders:read"]
    assert event["method"] is event["path"] is event["status"] is None
    assert set(event) >= {"schema", "time", "protocol", "duration_ms", "user_agent", "kid"}
    assert_no_secret(events.text(), token, key_text)
    assert key_text not in repr(issuer)


def test_typ_header_and_lifetime(events: CapturedEvents) -> None:
    issuer = TokenIssuer(
        algorithm="HS384",
        secret=os.urandom(48),
        lifetime=60,
        token_type="at+jwt",
        clock=lambda: 1e9,
    )
    token = issuer.issue("bob", {"tenant": "t1"}, lifetime=30)
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["iat"], claims["exp"], claims["tenant"]) == (1_000_000_000, 1_000_000_030, "t1")
    assert issuer.verify_options()["token_type"] == "at+jwt"


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"algorithm": "none"}, "algorithm"),
        ({"algorithm": "HS256"}, "secret"),
        ({"algorithm": "HS256", "secret": b"short"}, "secret"),
        ({"algorithm": "RS256"}, "private_key"),
        ({"algorithm": "RS256", "private_key": "not a pem"}, "private_key"),
        ({"algorithm": "HS256", "secret": os.urandom(32), "lifetime": 0}, "lifetime"),
    ],
)
def test_bad_configuration_names_the_option(options: dict[str, object], option: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenIssuer(**options)  # type: ignore[arg-type]
    assert caught.value.option == option


def test_key_that_cannot_sign_the_algorithm(rsa_pem: str) -> None:
    with pytest.raises(ConfigurationError, match="cannot sign ES256"):
        TokenIssuer(algorithm="ES256", private_key=rsa_pem)


def test_secret_file_and_reserved_claims(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(os.urandom(32).hex().encode() + b"\n")
    issuer = TokenIssuer(algorithm="HS256", secret_file=secret_file)
    with pytest.raises(ValueError, match="exp"):
        issuer.issue("alice", {"exp": 1})
    with pytest.raises(ValueError, match="subject"):
        issuer.issue("")


def hs256(**options: Any) -> TokenIssuer:
    return TokenIssuer(algorithm="HS256", secret=os.urandom(32), **options)


@pytest.fixture
def signings(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The payloads ``jwt.encode`` signed during the test."""
    signed: list[dict[str, Any]] = []
    encode = jwt.encode

    def spy(payload: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        signed.append(dict(payload))
        return encode(payload, *args, **kwargs)

    monkeypatch.setattr(jwt, "encode", spy)
    return signed


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"issuer": 123}, "issuer"),
        ({"issuer": ""}, "issuer"),
        ({"issuer": ["https://a/", "https://b/"]}, "issuer"),
        ({"audience": 123}, "audience"),
        ({"audience": ""}, "audience"),
        ({"audience": []}, "audience"),
        ({"audience": ["api", 7]}, "audience"),
        ({"audience": b"api"}, "audience"),
        ({"kid": 7}, "kid"),
        ({"kid": "k" * 257}, "kid"),
        ({"token_type": ""}, "token_type"),
        ({"clock": 1e9}, "clock"),
    ],
)
def test_claim_and_header_values_are_checked_at_construction(
    options: dict[str, object], option: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        hs256(**options)
    assert caught.value.option == option


def test_audience_list_is_kept_as_a_list_claim() -> None:
    issuer = hs256(audience=("api", "admin"))
    claims = jwt.decode(issuer.issue("alice"), options={"verify_signature": False})
    assert claims["aud"] == ["api", "admin"]
    assert Settings(**issuer.verify_options()).audience == ("api", "admin")


def test_per_call_audience_is_checked_before_signing(
    signings: list[dict[str, Any]], events: CapturedEvents
) -> None:
    with pytest.raises(ValueError, match="audience"):
        hs256().issue("alice", audience=123)  # type: ignore[arg-type]
    assert signings == []
    assert list(events) == []


@pytest.mark.parametrize(
    ("lifetime", "seconds"),
    [(1, 1), (1.5, 2), (59.001, 60), (datetime.timedelta(milliseconds=1500), 2), (900.0, 900)],
)
def test_fractional_lifetimes_round_up_to_whole_seconds(
    lifetime: float | datetime.timedelta, seconds: int
) -> None:
    issuer = hs256(lifetime=lifetime, clock=lambda: 1e9 + 0.999)
    assert issuer.lifetime == seconds
    claims = jwt.decode(issuer.issue("alice"), options={"verify_signature": False})
    assert (claims["iat"], claims["exp"]) == (1_000_000_000, 1_000_000_000 + seconds)
    claims = jwt.decode(
        issuer.issue("alice", lifetime=lifetime), options={"verify_signature": False}
    )
    assert claims["exp"] - claims["iat"] == seconds


@pytest.mark.parametrize(
    "lifetime", [0.5, 0.999, datetime.timedelta(milliseconds=500), -1, float("nan"), True, "900"]
)
def test_lifetimes_under_a_second_are_refused(
    lifetime: object, signings: list[dict[str, Any]]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        hs256(lifetime=lifetime)
    assert caught.value.option == "lifetime"
    with pytest.raises(ValueError, match=r"^lifetime: ") as raised:
        hs256().issue("alice", lifetime=lifetime)  # type: ignore[arg-type]
    assert not isinstance(raised.value, ConfigurationError)  # that one is for construction
    assert signings == []


def test_lifetime_is_capped_by_max_lifetime(
    signings: list[dict[str, Any]], events: CapturedEvents
) -> None:
    day = datetime.timedelta(days=1)
    assert hs256(lifetime=day).lifetime == 86400  # the default cap: one day
    for options, option in [
        ({"lifetime": day + datetime.timedelta(seconds=1)}, "lifetime"),
        ({"lifetime": datetime.timedelta(days=365 * 30)}, "lifetime"),
        ({"lifetime": 3600, "max_lifetime": 600}, "lifetime"),
        ({"max_lifetime": 600}, "lifetime"),  # the default lifetime, 900 s, is over it
        ({"max_lifetime": 0}, "max_lifetime"),
        ({"max_lifetime": "1d"}, "max_lifetime"),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            hs256(**options)
        assert caught.value.option == option, options
    week = hs256(lifetime=3600, max_lifetime=datetime.timedelta(days=7))
    assert week.max_lifetime == 7 * 86400
    week.issue("alice", lifetime=datetime.timedelta(days=7))
    assert len(signings) == 1
    with pytest.raises(ValueError, match="max_lifetime"):
        week.issue("alice", lifetime=datetime.timedelta(days=7, seconds=1))
    with pytest.raises(ValueError, match="max_lifetime"):
        hs256(max_lifetime=60, lifetime=60).issue("alice", lifetime=60.5)  # rounds up to 61
    assert len(signings) == len(events) == 1


@pytest.mark.parametrize("material", ["secret", "secret_file"])
def test_secret_with_an_asymmetric_algorithm_is_refused(
    material: str, rsa_pem: str, tmp_path: Path
) -> None:
    secret = os.urandom(32).hex()
    (tmp_path / "secret").write_text(secret)
    value = secret if material == "secret" else tmp_path / "secret"
    with pytest.raises(ConfigurationError) as caught:
        TokenIssuer(algorithm="RS256", private_key=rsa_pem, **{material: value})  # type: ignore[arg-type]
    assert caught.value.option == material
    assert secret not in str(caught.value)
    assert rsa_pem not in str(caught.value)


@pytest.mark.parametrize("material", ["private_key", "private_key_file"])
def test_private_key_with_hmac_is_refused(material: str, rsa_pem: str, tmp_path: Path) -> None:
    secret = os.urandom(32).hex()
    (tmp_path / "key.pem").write_text(rsa_pem)
    value = rsa_pem if material == "private_key" else tmp_path / "key.pem"
    with pytest.raises(ConfigurationError) as caught:
        TokenIssuer(algorithm="HS256", secret=secret, **{material: value})  # type: ignore[arg-type]
    assert caught.value.option == material
    assert secret not in str(caught.value)
    assert rsa_pem not in str(caught.value)


def test_a_key_given_as_the_algorithm_is_not_echoed(rsa_pem: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        TokenIssuer(algorithm=rsa_pem, private_key=rsa_pem)
    assert caught.value.option == "algorithm"
    assert rsa_pem not in str(caught.value)
    assert rsa_pem.splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize(
    ("how", "scope", "claim"),
    [
        ("claims", ["orders:read", "orders:write"], "orders:read orders:write"),
        ("claims", ("orders:read",), "orders:read"),
        ("claims", "orders:read  orders:write", "orders:read orders:write"),
        ("keyword", "orders:read\torders:write", "orders:read orders:write"),
        ("keyword", ["orders:read"], "orders:read"),
    ],
)
def test_scope_as_a_list_or_string_becomes_one_space_separated_claim(
    how: str, scope: object, claim: str, events: CapturedEvents
) -> None:
    issuer = hs256()
    if how == "claims":
        token = issuer.issue("alice", {"scope": scope})
    else:
        token = issuer.issue("alice", scope=scope)  # type: ignore[arg-type]
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == claim
    assert events.only()["scopes"] == claim.split()


@pytest.mark.parametrize("scope", ["", [], ()])
def test_an_empty_scope_adds_no_claim(scope: object) -> None:
    issuer = hs256()
    for token in (issuer.issue("alice", {"scope": scope}), issuer.issue("alice", scope=scope)):  # type: ignore[arg-type]
        assert "scope" not in jwt.decode(token, options={"verify_signature": False})


@pytest.mark.parametrize(
    ("claims", "scope", "message"),
    [
        ({"scope": ["orders:read", 7]}, None, "scope"),
        ({"scope": ["orders read"]}, None, "scope"),
        ({"scope": 'say"hi'}, None, "scope"),
        ({"scope": "caf\u00e9"}, None, "scope"),
        ({"scope": {"orders:read"}}, None, "scope"),
        ({"scope": b"orders:read"}, None, "scope"),
        ({}, ["a\\b"], "scope"),
        ({"scope": "a"}, "b", "scope"),  # both ways at once
        ({"tenant": {"t1"}}, None, "'tenant'"),
        ({"ratio": float("nan")}, None, "'ratio'"),
        ({"nested": {"deep": object()}}, None, "'nested'"),
        ({1: "numeric name"}, None, "claim names"),
    ],
)
def test_bad_claims_are_refused_before_signing(
    claims: dict[Any, Any],
    scope: object,
    message: str,
    signings: list[dict[str, Any]],
    events: CapturedEvents,
) -> None:
    with pytest.raises(ValueError, match=message):
        hs256().issue("alice", claims, scope=scope)  # type: ignore[arg-type]
    assert signings == []
    assert list(events) == []


def test_claims_must_be_a_mapping(signings: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="claims"):
        hs256().issue("alice", [("tenant", "t1")])  # type: ignore[arg-type]
    assert signings == []


def test_a_datetime_nbf_claim_is_still_encoded() -> None:
    nbf = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    token = hs256().issue("alice", {"nbf": nbf})
    assert jwt.decode(token, options={"verify_signature": False})["nbf"] == int(nbf.timestamp())


class _BrokenSink(logging.Handler):
    """A handler that raises out of ``emit`` for audit records (as a careless one may)."""

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "jwt_audit"):
            raise RuntimeError("sink down")


@pytest.fixture
def broken_sink() -> Iterator[None]:
    handler = _BrokenSink()
    logger = logging.getLogger("jwt_audit")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@pytest.mark.usefixtures("broken_sink")
def test_a_signed_token_is_returned_even_when_its_event_cannot_be_delivered(
    events: CapturedEvents,
) -> None:
    secret = os.urandom(32)
    issuer = TokenIssuer(algorithm="HS256", secret=secret)
    token = issuer.issue("alice")
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"] == "alice"
    # the broken handler comes first, so the capture saw only the report of it
    assert [r.name for r in events.records] == ["jwt_audit.internal"]
    assert "token_issued could not be emitted" in events.text()
    assert "sink down" in events.text()
    assert_no_secret(events.text(), token, secret.hex())


def test_login_events(events: CapturedEvents) -> None:
    audit = AuditLogger()
    audit.login_succeeded("42", client_ip="198.51.100.1", request_id="login-1", path="/login")
    audit.login_failed("eve\r\nINFO forged", reason="bad_password", client_ip="198.51.100.2")
    ok, failed = events
    assert (ok["event"], ok["outcome"], ok["reason"], ok["subject"]) == (
        "login_succeeded",
        "allowed",
        None,
        "42",
    )
    assert ok["request_id"] == "login-1"
    assert ok["path"] == "/login"
    assert (failed["event"], failed["outcome"], failed["reason"]) == (
        "login_failed",
        "denied",
        "bad_password",
    )
    assert failed["subject"] == "eve\\x0d\\x0aINFO forged"
    assert failed["client_ip"] == "198.51.100.2"
    assert [r.levelno for r in events.records] == [logging.INFO, logging.WARNING]
    assert all("\n" not in JSONFormatter().format(r) for r in events.records)
    assert set(ok) == set(failed)


def test_flask_login_example(events: CapturedEvents) -> None:
    from examples import login_flask

    issuer = TokenIssuer(algorithm="HS256", secret=os.urandom(32), audience="orders-api")
    app = login_flask.create_app(issuer, login_flask.demo_users({"alice": "wonderland"}))
    client = app.test_client()
    good = client.post("/login", json={"username": "alice", "password": "wonderland"})
    bad = client.post("/login", data={"username": "alice", "password": "guess"})
    assert good.status_code == 200
    assert bad.status_code == 401
    token = good.get_json()["access_token"]
    verdict = Gate(Settings(**issuer.verify_options())).decide("/", ["Bearer " + token])
    assert verdict.reason is None
    assert [e["event"] for e in events] == ["login_succeeded", "token_issued", "login_failed"]
    assert_no_secret(events.text(), token, "wonderland", "guess")


def test_django_login_example(events: CapturedEvents) -> None:
    from django.test import RequestFactory

    from examples import login_django  # configures Django when nothing else has

    issuer = TokenIssuer(algorithm="HS256", secret=os.urandom(32))
    view = login_django.make_login_view(issuer, lambda user, pw: (user, pw) == ("ann", "pw-1"))
    factory = RequestFactory()
    good = view(
        factory.post(
            "/login",
            {"username": "ann", "password": "pw-1"},
            content_type="application/json",
            headers={"X-Request-ID": "dj-1"},
        )
    )
    bad = view(factory.post("/login", {"username": "ann", "password": "nope"}))
    wrong_method = view(factory.get("/login"))
    assert (good.status_code, bad.status_code, wrong_method.status_code) == (200, 401, 405)
    assert [e["event"] for e in events] == ["login_succeeded", "token_issued", "login_failed"]
    assert events[0]["request_id"] == "dj-1"
    assert events[2]["reason"] == "bad_credentials"
    assert_no_secret(events.text(), json.loads(good.content)["access_token"], "pw-1", "nope")
