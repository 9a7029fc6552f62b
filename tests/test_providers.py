"""``providers``: several trusted issuers, each with its own keys and policy."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwks_server import JWKSServer

from jwt_audit_middleware import ConfigurationError, Settings
from jwt_audit_middleware.policy import Gate
from jwt_audit_middleware.testing import SigningKey, jwks_document

CORP = "https://login.corp.example/"
PARTNER = "https://idp.partner.example/"


pytestmark = pytest.mark.usefixtures("no_leaked_jwks_threads")


@pytest.fixture(scope="module")
def partner_rsa() -> SigningKey:
    """The partner's RS256 key, with the same kid as the corporate one."""
    return SigningKey.generate("RS256", kid="rs256-1")


@pytest.fixture
def gate(server: JWKSServer, keys: dict[str, SigningKey]) -> Iterator[Gate]:
    """Corporate IdP: RS256 from a JWKS URL; partner: ES256 from a static JWKS."""
    settings = Settings(
        providers=[
            {
                "issuer": CORP,
                "jwks_url": server.url,
                "algorithms": ["RS256"],
                "audience": "orders",
            },
            {
                "issuer": PARTNER,
                "jwks": jwks_document(keys["ES256"]),
                "algorithms": ["ES256"],
                "audience": ["orders", "partner-api"],
            },
        ],
        jwks_timeout=0.5,
    )
    built = Gate(settings)
    yield built
    built.close()


def check(gate: Gate, token: str) -> tuple[bool, str | None]:
    verdict = gate.decide_sync("/", [f"Bearer {token}"])
    return verdict.allow, verdict.reason


def test_both_providers_verify_their_own_tokens(
    gate: Gate, rsa_key: SigningKey, keys: dict[str, SigningKey]
) -> None:
    assert check(gate, rsa_key.token(iss=CORP, aud="orders")) == (True, None)
    assert check(gate, keys["ES256"].token(iss=PARTNER, aud="partner-api")) == (True, None)
    verdict = gate.decide("/", [f"Bearer {keys['ES256'].token(iss=PARTNER, aud='orders')}"])
    assert verdict.token is not None
    assert verdict.token.issuer == PARTNER
    assert gate.settings.algorithms == ("RS256", "ES256")  # the union


def test_a_token_of_one_provider_does_not_verify_with_the_others_keys(
    gate: Gate, rsa_key: SigningKey, keys: dict[str, SigningKey]
) -> None:
    # the partner's ES256 key claiming to be the corporate IdP: RS256 only there
    assert check(gate, keys["ES256"].token(iss=CORP, aud="orders")) == (
        False,
        "algorithm_not_allowed",
    )
    # the corporate RS256 key claiming to be the partner
    assert check(gate, rsa_key.token(iss=PARTNER, aud="orders")) == (
        False,
        "algorithm_not_allowed",
    )


def test_same_algorithm_and_kid_at_two_providers_stay_apart(
    rsa_key: SigningKey, partner_rsa: SigningKey
) -> None:
    settings = Settings(
        algorithms=["RS256"],
        providers=[
            {"issuer": CORP, "public_key": rsa_key.public_pem},
            {"issuer": PARTNER, "jwks": jwks_document(partner_rsa)},
        ],
    )
    gate = Gate(settings)
    assert check(gate, rsa_key.token(iss=CORP)) == (True, None)
    assert check(gate, partner_rsa.token(iss=PARTNER)) == (True, None)
    assert check(gate, partner_rsa.token(iss=CORP)) == (False, "bad_signature")
    assert check(gate, rsa_key.token(iss=PARTNER)) == (False, "bad_signature")


def test_issuer_selection_failures(gate: Gate, rsa_key: SigningKey) -> None:
    assert check(gate, rsa_key.token(iss="https://evil.example/", aud="orders")) == (
        False,
        "invalid_issuer",
    )
    assert check(gate, rsa_key.token(aud="orders")) == (False, "missing_claim")
    payload = {"iss": ["x"], "aud": "orders", "exp": int(time.time()) + 60}
    not_a_string = jwt.api_jws.encode(
        json.dumps(payload).encode(), rsa_key.private, "RS256", headers={"kid": rsa_key.kid}
    )
    assert check(gate, not_a_string) == (False, "malformed_token")
    verdict = gate.decide("/", [f"Bearer {rsa_key.token(iss='https://evil.example/')}"])
    # nothing unverified reaches the event
    assert verdict.event_base["subject"] is None
    assert verdict.event_base["issuer"] is None


def test_each_provider_has_its_own_audience(
    gate: Gate, rsa_key: SigningKey, keys: dict[str, SigningKey]
) -> None:
    assert check(gate, rsa_key.token(iss=CORP, aud="partner-api")) == (False, "invalid_audience")
    assert check(gate, keys["ES256"].token(iss=PARTNER, aud="billing")) == (
        False,
        "invalid_audience",
    )


def test_a_providers_jwks_url_rotates(
    gate: Gate, server: JWKSServer, rsa_key: SigningKey, keys: dict[str, SigningKey]
) -> None:
    rotated = SigningKey.generate("RS256", kid="corp-2")
    server.set("ok", jwks_document(rsa_key, rotated))
    assert check(gate, rotated.token(iss=CORP, aud="orders")) == (True, None)
    server.set("500")
    assert check(gate, keys["ES256"].token(iss=PARTNER, aud="orders")) == (True, None)


def test_key_events_name_the_provider(
    server: JWKSServer, keys: dict[str, SigningKey], events: Any
) -> None:
    gate = Gate(
        Settings(
            providers=[
                {"issuer": CORP, "jwks_url": server.url, "algorithms": ["RS256"]},
                {
                    "issuer": PARTNER,
                    "public_key": keys["ES256"].public_pem,
                    "algorithms": ["ES256"],
                },
            ],
            algorithms=["RS256", "ES256"],
        )
    )
    try:
        added = [e for e in events if e["event"] == "key_event"]
        assert [(e["outcome"], e["issuer"], e["kid"]) for e in added] == [
            ("key_added", CORP, "rs256-1")
        ]
    finally:
        gate.close()


def test_providers_from_env_file_and_pickle(tmp_path: Path, keys: dict[str, SigningKey]) -> None:
    jwks_file = tmp_path / "partner.json"
    jwks_file.write_text(json.dumps(jwks_document(keys["ES256"])))
    providers = [
        {"issuer": CORP, "secret": "s" * 32, "algorithms": ["HS256"]},
        {"issuer": PARTNER, "jwks_file": str(jwks_file), "algorithms": ["ES256"]},
    ]
    settings = Settings.from_env({"JWT_AUDIT_PROVIDERS": json.dumps(providers)})
    assert [p.issuer for p in settings.trusted_providers] == [CORP, PARTNER]
    assert "s" * 32 not in repr(settings)
    copy = pickle.loads(pickle.dumps(settings))
    jwks_file.unlink()  # the document travelled inside
    gate = Gate(copy)
    assert check(gate, keys["ES256"].token(iss=PARTNER)) == (True, None)
    hs = SigningKey("HS256", b"s" * 32)
    assert check(gate, hs.token(iss=CORP)) == (True, None)
    assert check(gate, hs.token(iss=PARTNER)) == (False, "algorithm_not_allowed")


def provider(**extra: Any) -> dict[str, Any]:
    return {
        "issuer": PARTNER,
        "jwks_url": "https://idp.partner.example/jwks",
        "algorithms": ["RS256"],
        **extra,
    }


@pytest.mark.parametrize(
    ("providers", "option", "message"),
    [
        ({"issuer": CORP}, "providers", "list of mappings"),
        ([], "algorithms", "is required"),
        (["x"], "providers[0]", "expected a mapping"),
        ([{"jwks_url": "https://a.example/j"}], "providers[0].issuer", "is required"),
        (
            [provider(), provider(jwks_url="http://idp.example/j")],
            "providers[1].jwks_url",
            "loopback",
        ),
        ([provider(), provider()], "providers[1].issuer", "same issuer"),
        ([provider(jwks_uri="x")], "providers[0].jwks_uri", "did you mean 'jwks_url'"),
        ([provider(public_key="x")], "providers[0].jwks_url", "exactly one key source"),
        ([{"issuer": CORP}], "providers[0].jwks_url", "exactly one key source"),
        ([provider(algorithms=["HS256"])], "providers[0].jwks_url", "shared secret"),
        ([provider(algorithms=["none"])], "providers[0].algorithms", "refused"),
        ([provider(algorithms=["ES512"])], "providers[0].algorithms", "not in algorithms"),
        (
            [{"issuer": CORP, "secret": "short", "algorithms": ["HS256"]}],
            "providers[0].secret",
            "needs at least",
        ),
        ([{"issuer": CORP, "jwks": {"keys": 1}}], "providers[0].jwks", "JWKS document"),
        ([{"issuer": CORP, "jwks_file": "/nonexistent"}], "providers[0].jwks_file", "cannot read"),
    ],
)
def test_provider_configuration_errors(providers: Any, option: str, message: str) -> None:
    algorithms = ["RS256", "ES256", "HS256"]
    if option == "algorithms":
        with pytest.raises(ConfigurationError, match=r"^algorithms: is required"):
            Settings(providers=providers)
        return
    with pytest.raises(ConfigurationError) as raised:
        Settings(algorithms=algorithms, providers=providers)
    assert raised.value.option == option
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "top",
    [
        {"issuer": CORP},
        {"secret": "s" * 32},
        {"jwks_url": "https://idp.example/jwks"},
    ],
)
def test_top_level_keys_and_issuer_conflict_with_providers(top: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings(algorithms=["RS256"], providers=[provider()], **top)
    assert raised.value.option == next(iter(top))


def test_provider_algorithms_are_required_without_a_top_level_list() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings(providers=[{"issuer": CORP, "jwks_url": "https://idp.example/jwks"}])
    assert raised.value.option == "providers[0].algorithms"


def test_providers_fetch_their_keys_side_by_side_at_start_up(server: JWKSServer) -> None:
    server.set("hang")
    started = time.monotonic()
    gate = Gate(
        Settings(
            algorithms=["RS256"],
            providers=[
                {"issuer": CORP, "jwks_url": server.url},
                {"issuer": PARTNER, "jwks_url": server.url + "?partner"},
            ],
            jwks_timeout=0.4,
        )
    )
    try:
        assert time.monotonic() - started < 0.75  # one deadline, not two
        assert server.hits == 2
    finally:
        gate.close()


# -- identity: sub is unique per issuer only ------------------------------------------


@pytest.mark.parametrize(
    ("options", "corp", "partner"),
    [
        ({}, "admin", "admin"),  # the default: documented as one namespace
        ({"identity": "{iss}|{sub}"}, f"{CORP}|admin", f"{PARTNER}|admin"),
        ({"per_provider": "partner:{sub}"}, "admin", "partner:admin"),
        ({"identity": lambda claims: f"u-{claims['sub']}"}, "u-admin", "u-admin"),
    ],
)
def test_identity_per_provider(
    rsa_key: SigningKey,
    partner_rsa: SigningKey,
    options: dict[str, Any],
    corp: str,
    partner: str,
) -> None:
    partner_options: dict[str, Any] = {"issuer": PARTNER, "jwks": jwks_document(partner_rsa)}
    if "per_provider" in options:
        partner_options["identity"] = options.pop("per_provider")
    settings = Settings(
        algorithms=["RS256"],
        providers=[{"issuer": CORP, "public_key": rsa_key.public_pem}, partner_options],
        **options,
    )
    gate = Gate(settings)
    ours = gate.decide_sync("/", [f"Bearer {rsa_key.token(iss=CORP, sub='admin')}"])
    theirs = gate.decide_sync("/", [f"Bearer {partner_rsa.token(iss=PARTNER, sub='admin')}"])
    assert ours.token is not None
    assert theirs.token is not None
    assert (ours.token.identity, theirs.token.identity) == (corp, partner)
    assert ours.token.subject == theirs.token.subject == "admin"  # the event keeps sub


def test_identity_template_without_its_claim_gives_no_identity(rsa_key: SigningKey) -> None:
    gate = Gate(Settings(**rsa_key.options(identity="{email}")))
    verdict = gate.decide_sync("/", [f"Bearer {rsa_key.token()}"])
    assert verdict.token is not None
    assert verdict.token.identity is None
    named = gate.decide_sync("/", [f"Bearer {rsa_key.token(email='a@example.com')}"])
    assert named.token is not None
    assert named.token.identity == "a@example.com"
