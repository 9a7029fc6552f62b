"""Settings: construction, validation (ConfigurationError naming the option), env/mapping."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os.path
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jwt_audit_middleware import ConfigurationError, Settings
from jwt_audit_middleware.events import fingerprint
from jwt_audit_middleware.testing import SigningKey, jwks_document
from jwt_audit_middleware.verifier import Verifier

SECRET = b"0123456789abcdef0123456789abcdef"  # 32 bytes: the HS256 minimum


def hs256(**extra: Any) -> dict[str, Any]:
    return {"algorithms": ["HS256"], "secret": SECRET, **extra}


def config_error(option: str, **options: Any) -> ConfigurationError:
    """Construct Settings, expect a ConfigurationError naming ``option``."""
    with pytest.raises(ConfigurationError) as info:
        Settings(**options)
    exc = info.value
    assert exc.option == option
    assert str(exc).startswith(f"{option}: ")
    return exc


def private_pem(key: SigningKey) -> str:
    return key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def small_rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# -- construction ----------------------------------------------------------


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)


def test_construction_from_kwargs_normalises_values(rsa_key: SigningKey) -> None:
    settings = Settings(
        algorithms=["RS256", "RS256"],
        public_key=rsa_key.public_pem,
        issuer="https://issuer.example",
        audience=["api", "admin"],
        leeway=datetime.timedelta(seconds=30),
        required_claims=["exp", "sub"],
        token_type="application/AT+JWT",
        exempt_paths=["/health"],
        optional_paths=["/public"],
        path_scopes={"/admin": "admin write", "/reports": ["read"]},
        mode="report-only",
        trusted_proxies=["10.0.0.0/8"],
        request_id_header="X-Correlation-ID",
        log_claims=["email"],
        realm="my api",
    )
    assert settings.algorithms == ("RS256",)
    assert settings.issuer == ("https://issuer.example",)
    assert settings.audience == ("api", "admin")
    assert settings.leeway == 30.0
    assert settings.leeway_seconds == 30.0
    assert settings.required_claims == ("exp", "sub")
    assert settings.token_type == "at+jwt"
    assert settings.exempt_paths == ("/health",)
    assert settings.optional_paths == ("/public",)
    assert dict(settings.path_scopes) == {"/admin": ("admin", "write"), "/reports": ("read",)}
    assert settings.mode == "report-only"
    assert settings.trusted_proxies == ("10.0.0.0/8",)
    assert settings.request_id_header == "x-correlation-id"
    assert settings.log_claims == ("email",)
    assert settings.realm == "my api"
    assert settings.keyring.usable_algorithms() == frozenset({"RS256"})


def test_defaults() -> None:
    settings = Settings(**hs256())
    assert settings.secret == SECRET
    assert settings.required_claims == ("exp",)
    assert settings.mode == "enforce"
    assert settings.trusted_proxies == ()
    assert settings.issuer is None
    assert settings.audience is None
    assert settings.token_type is None
    assert settings.revocation_check is None


def test_str_secret_is_encoded() -> None:
    settings = Settings(algorithms=["HS256"], secret=SECRET.decode())
    assert settings.secret == SECRET


def test_settings_are_immutable() -> None:
    settings = Settings(**hs256())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.leeway = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.algorithms = ("none",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.path_scopes["/x"] = ("y",)  # type: ignore[index]
    assert settings.leeway == 0
    assert settings.algorithms == ("HS256",)


@pytest.mark.parametrize(
    ("leeway", "seconds"), [(0, 0.0), (5, 5.0), (2.5, 2.5), (datetime.timedelta(minutes=1), 60.0)]
)
def test_leeway_seconds_is_a_float(leeway: object, seconds: float) -> None:
    settings = Settings(**hs256(leeway=leeway))
    assert type(settings.leeway_seconds) is float
    assert settings.leeway_seconds == seconds
    assert "leeway_seconds" not in Settings.option_names()
    assert "leeway_seconds" not in repr(settings)
    copy = pickle.loads(pickle.dumps(settings))
    assert copy.leeway_seconds == seconds
    assert copy == settings


# -- unknown options -------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("algoritms", "algorithms"), ("isuer", "issuer"), ("levay", "leeway")],
)
def test_unknown_option_suggests_the_closest_name(typo: str, suggestion: str) -> None:
    options = {"algorithms": ["HS256"], "secret": SECRET, typo: "x"}
    if typo == "algoritms":
        del options["algorithms"]
    exc = config_error(typo, **options)
    assert f"did you mean {suggestion!r}" in str(exc)


def test_unknown_option_without_close_match_has_no_suggestion() -> None:
    exc = config_error("zzzzzz", **hs256(zzzzzz=1))
    assert "unknown option" in str(exc)
    assert "did you mean" not in str(exc)


# -- algorithms ------------------------------------------------------------


def test_algorithms_missing() -> None:
    config_error("algorithms", secret=SECRET)


@pytest.mark.parametrize("value", [[], (), [""], [1], None, 5])
def test_algorithms_empty_or_not_strings(value: object) -> None:
    config_error("algorithms", algorithms=value, secret=SECRET)


def test_algorithms_unknown() -> None:
    exc = config_error("algorithms", algorithms=["HS257"], secret=SECRET)
    assert "HS257" in str(exc)


@pytest.mark.parametrize("none", ["none", "None", "NONE", "nOnE"])
def test_algorithm_none_is_refused_in_any_case(none: str) -> None:
    exc = config_error("algorithms", algorithms=["HS256", none], secret=SECRET)
    assert "none" in str(exc).lower()


def test_algorithm_listed_without_a_key(rsa_key: SigningKey) -> None:
    exc = config_error("algorithms", algorithms=["RS256", "ES256"], public_key=rsa_key.public_pem)
    assert "ES256" in str(exc)


def test_no_key_at_all() -> None:
    config_error("algorithms", algorithms=["RS256"])


# -- HMAC secrets ----------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithms", "length", "culprit"),
    [
        (["HS256"], 31, "HS256"),
        (["HS384"], 47, "HS384"),
        (["HS512"], 63, "HS512"),
        (["HS256", "HS512"], 32, "HS512"),
    ],
)
def test_secret_too_short_for_the_algorithm(
    algorithms: list[str], length: int, culprit: str
) -> None:
    secret = os.urandom(length)
    exc = config_error("secret", algorithms=algorithms, secret=secret)
    assert culprit in str(exc)
    assert str(length) in str(exc)


@pytest.mark.parametrize(("alg", "length"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_secret_of_minimum_length_is_accepted(alg: str, length: int) -> None:
    settings = Settings(algorithms=[alg], secret=os.urandom(length))
    assert settings.keyring.usable_algorithms() == frozenset({alg})


def test_secret_that_is_a_pem_public_key_is_refused(rsa_key: SigningKey) -> None:
    assert rsa_key.public_pem is not None
    exc = config_error("secret", algorithms=["HS256"], secret=rsa_key.public_pem)
    assert "-----BEGIN" not in str(exc)


def test_secret_that_is_a_private_key_is_refused(rsa_key: SigningKey) -> None:
    pem = private_pem(rsa_key)
    exc = config_error("secret", algorithms=["HS256"], secret=pem)
    assert "PRIVATE KEY-----" not in str(exc)


def test_secret_without_an_hmac_algorithm(rsa_key: SigningKey) -> None:
    config_error("secret", algorithms=["RS256"], secret=SECRET, public_key=rsa_key.public_pem)


def test_secret_of_wrong_type() -> None:
    config_error("secret", algorithms=["HS256"], secret=12345)


def test_secret_error_message_never_contains_the_secret() -> None:
    secret = b"short-but-recognisable-secret"
    exc = config_error("secret", algorithms=["HS256"], secret=secret)
    assert secret.decode() not in str(exc)
    assert secret.decode() not in repr(exc)


def test_secret_and_secret_file_both(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    config_error("secret_file", algorithms=["HS256"], secret=SECRET, secret_file=path)


def test_secret_file_missing(tmp_path: Path) -> None:
    config_error("secret_file", algorithms=["HS256"], secret_file=tmp_path / "nope")


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""])
def test_secret_file_read_once_and_trailing_newline_stripped(tmp_path: Path, ending: bytes) -> None:
    # A printable secret, as written by an editor or `openssl rand -hex 32 > file`
    # (a random binary secret could itself end in a newline byte).
    key = SigningKey("HS256", os.urandom(32).hex().encode())
    path = tmp_path / "hmac.key"
    path.write_bytes(key.secret + ending)
    settings = Settings(algorithms=["HS256"], secret_file=str(path))
    path.unlink()  # read at construction, never again
    assert settings.secret == key.secret
    token = key.token(sub="carol")
    verified = Verifier(settings).verify(token, fingerprint(token))
    assert verified.subject == "carol"


# -- public keys -----------------------------------------------------------


def test_public_key_that_is_a_private_key_is_refused(rsa_key: SigningKey) -> None:
    exc = config_error("public_key", algorithms=["RS256"], public_key=private_pem(rsa_key))
    assert "private" in str(exc)
    assert "MII" not in str(exc)


def test_rsa_key_below_2048_bits(small_rsa_pem: str) -> None:
    exc = config_error("public_key", algorithms=["RS256"], public_key=small_rsa_pem)
    assert "1024" in str(exc)


def test_ec_p384_key_with_es256_only(keys: dict[str, SigningKey]) -> None:
    exc = config_error("public_key", algorithms=["ES256"], public_key=keys["ES384"].public_pem)
    assert "secp384r1" in str(exc)


def test_public_key_not_pem() -> None:
    config_error("public_key", algorithms=["RS256"], public_key="not a key")


def test_public_key_list(keys: dict[str, SigningKey]) -> None:
    settings = Settings(
        algorithms=["RS256", "ES256"],
        public_key=[keys["RS256"].public_pem, keys["ES256"].public_pem],
    )
    assert isinstance(settings.public_key, tuple)
    assert settings.keyring.usable_algorithms() == frozenset({"RS256", "ES256"})


# -- jwks / jwks_file ------------------------------------------------------


def test_jwks_document(keys: dict[str, SigningKey]) -> None:
    document = jwks_document(keys["RS256"], keys["ES256"])
    settings = Settings(algorithms=["RS256", "ES256"], jwks=document)
    assert {k.kid for k in settings.keyring.keys} == {"rs256-1", "es256-1"}
    token = keys["ES256"].token(sub="dave")
    assert Verifier(settings).verify(token, fingerprint(token)).subject == "dave"


def test_jwks_file(tmp_path: Path, rsa_key: SigningKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_document(rsa_key)), encoding="utf-8")
    settings = Settings(algorithms=["RS256"], jwks_file=path)
    token = rsa_key.token(sub="erin")
    assert Verifier(settings).verify(token, fingerprint(token)).subject == "erin"


def test_jwks_file_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{not json", encoding="utf-8")
    config_error("jwks_file", algorithms=["RS256"], jwks_file=path)


def test_jwks_and_jwks_file_both(tmp_path: Path, rsa_key: SigningKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_document(rsa_key)), encoding="utf-8")
    config_error(
        "jwks_file", algorithms=["RS256"], jwks=jwks_document(rsa_key), jwks_file=str(path)
    )


def test_a_jwks_file_travels_in_a_pickled_copy(tmp_path: Path, rsa_key: SigningKey) -> None:
    path = tmp_path / "jwks.json"
    text = json.dumps(jwks_document(rsa_key))
    path.write_text(text, encoding="utf-8")
    settings = Settings(algorithms=["RS256"], jwks_file=path)
    assert settings.jwks == text  # read once, like secret_file into secret
    path.unlink()
    copy = pickle.loads(pickle.dumps(settings))
    token = rsa_key.token(sub="erin")
    assert Verifier(copy).verify(token, fingerprint(token)).subject == "erin"


@pytest.mark.parametrize("option", ["secret_file", "jwks_file"])
def test_a_file_descriptor_is_not_a_key_file(option: str) -> None:
    exc = config_error(option, algorithms=["HS256", "RS256"], **{option: 0})
    assert "expected a file path" in str(exc)


def test_top_level_and_provider_keys_are_loaded_alike(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(b"\xff")
    top = config_error("jwks_file", algorithms=["RS256"], jwks_file=path)
    provider = config_error(
        "providers[0].jwks_file",
        algorithms=["RS256"],
        providers=[{"issuer": "https://a.example", "jwks_file": path}],
    )
    assert str(top) == "jwks_file: is not UTF-8 text"
    assert str(provider) == "providers[0].jwks_file: is not UTF-8 text"
    settings = Settings(
        algorithms=["HS256"], providers=[{"issuer": "https://a.example", "secret": SECRET.decode()}]
    )
    assert settings.trusted_providers[0].options["secret"] == SECRET


def test_jwks_with_private_key_is_refused(rsa_key: SigningKey) -> None:
    document = jwks_document(rsa_key)
    document["keys"][0]["d"] = "AQAB"
    config_error("jwks", algorithms=["RS256"], jwks=document)


# -- other options ---------------------------------------------------------


@pytest.mark.parametrize("leeway", [-1, -0.5, float("nan"), float("inf"), True, False, "5"])
def test_bad_leeway(leeway: object) -> None:
    config_error("leeway", **hs256(leeway=leeway))


def test_negative_timedelta_leeway() -> None:
    config_error("leeway", **hs256(leeway=datetime.timedelta(seconds=-1)))


@pytest.mark.parametrize("mode", ["audit", "ENFORCE", "", None])
def test_bad_mode(mode: object) -> None:
    config_error("mode", **hs256(mode=mode))


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "not-an-ip", "300.1.1.1", "::g/64"])
def test_bad_trusted_proxies(cidr: str) -> None:
    exc = config_error("trusted_proxies", **hs256(trusted_proxies=["127.0.0.1", cidr]))
    assert cidr in str(exc)


@pytest.mark.parametrize("option", ["exempt_paths", "optional_paths"])
def test_path_must_start_with_slash(option: str) -> None:
    exc = config_error(option, **hs256(**{option: ["/ok", "health"]}))
    assert "health" in str(exc)


def test_path_scopes_path_must_start_with_slash() -> None:
    config_error("path_scopes", **hs256(path_scopes={"admin": ["admin"]}))


@pytest.mark.parametrize("scope", ['ad"min', "back\\slash", "tab\there", "caf\u00e9"])
def test_bad_scope_token_in_path_scopes(scope: str) -> None:
    config_error("path_scopes", **hs256(path_scopes={"/admin": [scope]}))


def test_path_scopes_not_a_mapping() -> None:
    config_error("path_scopes", **hs256(path_scopes=["/admin"]))


@pytest.mark.parametrize("realm", ['my "api"', "back\\slash", "line\nbreak"])
def test_bad_realm(realm: str) -> None:
    config_error("realm", **hs256(realm=realm))


def test_max_token_bytes_must_be_an_int() -> None:
    config_error("max_token_bytes", **hs256(max_token_bytes=1.5))
    config_error("max_token_bytes", **hs256(max_token_bytes=10))


def test_request_id_header_must_be_a_header_name() -> None:
    config_error("request_id_header", **hs256(request_id_header="x request id"))


def test_revocation_check_import_string() -> None:
    settings = Settings(**hs256(revocation_check="os.path:exists"))
    assert settings.revocation_check is os.path.exists
    assert settings.revocation_is_async is False
    dotted = Settings(**hs256(revocation_check="os.path.exists"))
    assert dotted.revocation_check is os.path.exists


@pytest.mark.parametrize(
    "target", ["os.path:no_such_function", "no_such_module_xyz:check", "os:sep", "nodots"]
)
def test_revocation_check_bad_import_string(target: str) -> None:
    config_error("revocation_check", **hs256(revocation_check=target))


def test_revocation_check_async_callable() -> None:
    async def check(claims: Any) -> bool:
        return False

    settings = Settings(**hs256(revocation_check=check))
    assert settings.revocation_check is check
    assert settings.revocation_is_async is True


def test_revocation_check_not_callable() -> None:
    config_error("revocation_check", **hs256(revocation_check=42))


# -- from_mapping ----------------------------------------------------------


def test_from_mapping_uppercase_keys() -> None:
    settings = Settings.from_mapping(
        {"ALGORITHMS": ["HS256"], "SECRET": SECRET, "Leeway": 5, "EXEMPT_PATHS": ["/health"]}
    )
    assert settings.algorithms == ("HS256",)
    assert settings.leeway == 5
    assert settings.exempt_paths == ("/health",)


def test_from_mapping_with_revocation_import_string() -> None:
    settings = Settings.from_mapping(
        {"ALGORITHMS": ["HS256"], "SECRET": SECRET, "REVOCATION_CHECK": "os.path:exists"}
    )
    assert settings.revocation_check is os.path.exists


@pytest.mark.parametrize("value", [None, [("algorithms", ["HS256"])], "algorithms=HS256"])
def test_from_mapping_rejects_non_mapping(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping(value)  # type: ignore[arg-type]
    assert info.value.option == "JWT_AUDIT"


def test_from_mapping_unknown_key_suggests() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_mapping({"ALGORITHMS": ["HS256"], "SECRET": SECRET, "ISUER": "x"})
    assert info.value.option == "isuer"
    assert "did you mean 'issuer'" in str(info.value)


# -- from_env --------------------------------------------------------------


def test_from_env_parses_every_kind() -> None:
    environ = {
        "JWT_AUDIT_ALGORITHMS": "HS256, HS384",
        "JWT_AUDIT_SECRET": "s" * 48,
        "JWT_AUDIT_AUDIENCE": '["api", "admin"]',
        "JWT_AUDIT_ISSUER": "https://issuer.example",
        "JWT_AUDIT_EXEMPT_PATHS": "/health,/metrics,",
        "JWT_AUDIT_LEEWAY": "2.5",
        "JWT_AUDIT_MAX_TOKEN_BYTES": "4096",
        "JWT_AUDIT_PATH_SCOPES": '{"/admin": ["admin"], "/reports": "read write"}',
        "JWT_AUDIT_MODE": "report-only",
        "JWT_AUDIT_REVOCATION_CHECK": "os.path:exists",
        "UNRELATED": "ignored",
    }
    settings = Settings.from_env(environ=environ)
    assert settings.algorithms == ("HS256", "HS384")
    assert settings.secret == b"s" * 48
    assert settings.audience == ("api", "admin")
    assert settings.issuer == ("https://issuer.example",)
    assert settings.exempt_paths == ("/health", "/metrics")
    assert settings.leeway == 2.5
    assert settings.max_token_bytes == 4096
    assert type(settings.max_token_bytes) is int
    assert dict(settings.path_scopes) == {"/admin": ("admin",), "/reports": ("read", "write")}
    assert settings.mode == "report-only"
    assert settings.revocation_check is os.path.exists


def test_from_env_custom_prefix() -> None:
    environ = {
        "APP_ALGORITHMS": '["HS256"]',
        "APP_SECRET": SECRET.decode(),
        "JWT_AUDIT_NOT_OURS": "whatever",
    }
    settings = Settings.from_env(environ=environ, prefix="APP_")
    assert settings.algorithms == ("HS256",)
    assert settings.secret == SECRET


def test_from_env_unknown_variable_suggests() -> None:
    environ = {
        "JWT_AUDIT_ALGORITHMS": "HS256",
        "JWT_AUDIT_SECRET": "s" * 32,
        "JWT_AUDIT_ISUER": "x",
    }
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(environ=environ)
    assert "isuer" in info.value.option.lower()
    assert "did you mean" in str(info.value)
    assert "issuer'" in str(info.value).lower()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JWT_AUDIT_MAX_TOKEN_BYTES", "4k"),
        ("JWT_AUDIT_MAX_TOKEN_BYTES", "1.5"),
        ("JWT_AUDIT_LEEWAY", "soon"),
        ("JWT_AUDIT_PATH_SCOPES", "{not json"),
        ("JWT_AUDIT_AUDIENCE", '["unterminated'),
    ],
)
def test_from_env_unparsable_value_names_the_variable(variable: str, value: str) -> None:
    environ = {"JWT_AUDIT_ALGORITHMS": "HS256", "JWT_AUDIT_SECRET": "s" * 32, variable: value}
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(environ=environ)
    assert info.value.option == variable
    assert variable in str(info.value)


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("JWT_AUDIT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JWT_AUDIT_ALGORITHMS", "HS256")
    monkeypatch.setenv("JWT_AUDIT_SECRET", "e" * 32)
    monkeypatch.setenv("JWT_AUDIT_REALM", "from-env")
    settings = Settings.from_env()
    assert settings.realm == "from-env"
    assert settings.secret == b"e" * 32


# -- repr never shows key material -----------------------------------------


def test_repr_and_str_never_show_the_secret() -> None:
    secret = b"Sup3r-S3cret-Value-That-Is-Long!!"
    settings = Settings(algorithms=["HS256"], secret=secret)
    for text in (repr(settings), str(settings), repr(settings.keyring)):
        assert secret.decode() not in text
        assert repr(secret) not in text
        assert secret.hex() not in text
    assert "HS256" in repr(settings)


def test_repr_never_shows_a_secret_read_from_a_file(tmp_path: Path) -> None:
    secret = b"file-secret-" + b"x" * 40
    path = tmp_path / "secret"
    path.write_bytes(secret + b"\n")
    settings = Settings(algorithms=["HS256"], secret_file=path)
    assert secret.decode() not in repr(settings)
    assert secret.decode() not in str(settings)


def test_repr_never_shows_jwks_oct_key_material() -> None:
    hmac_key = SigningKey.generate("HS256", kid="oct-1")
    document = jwks_document(hmac_key)
    material = document["keys"][0]["k"]
    settings = Settings(algorithms=["HS256"], jwks=document)
    text_document = Settings(algorithms=["HS256"], jwks=json.dumps(document))
    for text in (repr(settings), str(settings), repr(text_document), repr(settings.keyring)):
        assert material not in text
        assert hmac_key.secret.hex() not in text


def test_secret_file_keeps_a_binary_secret_and_is_named_in_errors(tmp_path: Any) -> None:
    binary = bytes(range(31)) + b"\r"  # 32 random-looking bytes that end in CR
    path = tmp_path / "secret.bin"
    path.write_bytes(binary)
    settings = Settings(algorithms=["HS256"], secret_file=str(path))
    assert settings.secret == binary  # only a final "\n" or "\r\n" is a line ending
    path.write_bytes(b"short\n")
    with pytest.raises(ConfigurationError) as error:
        Settings(algorithms=["HS256"], secret_file=str(path))
    assert error.value.option == "secret_file"


def test_leeway_is_capped_unless_max_leeway_is_raised() -> None:
    # leeway=1e12 accepted exp=1: any token ever issued would still pass
    config_error("leeway", **hs256(leeway=1e12))
    config_error("leeway", **hs256(leeway=301))
    assert Settings(**hs256(leeway=300)).leeway_seconds == 300.0
    assert Settings(**hs256(leeway=3600, max_leeway=3600)).leeway_seconds == 3600.0
    config_error("max_leeway", **hs256(max_leeway=-1))


# -- abuse detection, shared state, per-rule report-only, metrics (contract §9, §11) --------


def _hs(**options: object) -> Settings:
    return Settings(algorithms=["HS256"], secret="s" * 32, **options)


def test_abuse_detection_is_off_by_default_and_true_means_the_contract_defaults() -> None:
    assert _hs().abuse is None
    abuse = _hs(abuse_detection=True).abuse
    assert abuse is not None
    assert (abuse.window_seconds, abuse.denials_per_ip, abuse.denials_per_subject) == (60, 20, 10)
    assert (abuse.ips_per_token, abuse.lockout_seconds) == (3, 0)


def test_abuse_detection_mapping_overrides_some_thresholds() -> None:
    settings = _hs(abuse_detection={"denials_per_ip": 5, "lockout_seconds": 30})
    assert settings.abuse is not None
    assert settings.abuse.denials_per_ip == 5
    assert settings.abuse.lockout_seconds == 30
    assert settings.abuse.window_seconds == 60
    assert dict(settings.abuse_detection)["denials_per_ip"] == 5  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"denials_per_iq": 3}, "did you mean 'denials_per_ip'"),
        ({"window_seconds": 0}, "abuse_detection.window_seconds"),
        ({"lockout_seconds": -1}, "abuse_detection.lockout_seconds"),
        ({"denials_per_ip": 2.5}, "expected an integer"),
        ("yes", "expected true, false or a mapping"),
    ],
)
def test_abuse_detection_refuses_bad_thresholds(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        _hs(abuse_detection=value)


def test_report_only_names_rules_and_refuses_unknown_ones() -> None:
    assert _hs(report_only=["lockout", "scopes"]).report_only == ("lockout", "scopes")
    with pytest.raises(ConfigurationError, match="did you mean 'revocation'"):
        _hs(report_only=["revocations"])


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", ""])
def test_state_url_must_be_a_redis_url(url: str) -> None:
    with pytest.raises(ConfigurationError, match="state_url"):
        _hs(state_url=url)


def test_missing_extras_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r"jwt-audit-middleware\[metrics\]"):
        _hs(metrics=True)
    with pytest.raises(ConfigurationError, match=r"jwt-audit-middleware\[redis\]"):
        _hs(state_url="redis://127.0.0.1:6379/0")


def test_metrics_takes_a_registry_but_not_anything_else() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    assert _hs(metrics=registry).metrics is registry
    with pytest.raises(ConfigurationError, match="CollectorRegistry"):
        _hs(metrics="yes")


def test_the_new_options_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "JWT_AUDIT_ALGORITHMS": "HS256",
            "JWT_AUDIT_SECRET": "s" * 32,
            "JWT_AUDIT_ABUSE_DETECTION": '{"lockout_seconds": 10}',
            "JWT_AUDIT_REPORT_ONLY": "lockout,revocation",
            "JWT_AUDIT_STATE_URL": "redis://127.0.0.1:6379/0",
        }
    )
    assert settings.abuse is not None
    assert settings.abuse.lockout_seconds == 10
    assert settings.report_only == ("lockout", "revocation")
    assert settings.state_url == "redis://127.0.0.1:6379/0"
    assert (
        Settings.from_env(
            {
                "JWT_AUDIT_ALGORITHMS": "HS256",
                "JWT_AUDIT_SECRET": "s" * 32,
                "JWT_AUDIT_ABUSE_DETECTION": "true",
            }
        ).abuse
        is not None
    )


# -- configuration friction (issue 13, item 4) ----------------------------------------


def _pem_file(tmp_path: Path, key: SigningKey, name: str = "public.pem") -> Path:
    path = tmp_path / name
    path.write_text(str(key.public_pem), encoding="utf-8")
    return path


def test_public_key_file_reads_one_pem_file_or_a_list(tmp_path: Path) -> None:
    rsa_key, ec_key = SigningKey.generate("RS256"), SigningKey.generate("ES256")
    one = Settings(algorithms=["RS256"], public_key_file=_pem_file(tmp_path, rsa_key))
    assert one.public_key == str(rsa_key.public_pem).encode()
    both = Settings(
        algorithms=["RS256", "ES256"],
        public_key_file=[str(_pem_file(tmp_path, rsa_key)), _pem_file(tmp_path, ec_key, "ec.pem")],
    )
    assert len(both.keyring) == 2
    verifier = Verifier(both)
    for key in (rsa_key, ec_key):
        token = key.token()
        assert verifier.verify(token, fingerprint(token)).claims["sub"] == "alice"
    copy = pickle.loads(pickle.dumps(both))  # the files' content travels, not their paths
    assert copy.public_key_file is None
    assert len(copy.keyring) == 2


def test_public_key_file_comes_from_the_environment(tmp_path: Path) -> None:
    key = SigningKey.generate("ES256")
    path = _pem_file(tmp_path, key)
    settings = Settings.from_env(
        {"JWT_AUDIT_ALGORITHMS": "ES256", "JWT_AUDIT_PUBLIC_KEY_FILE": str(path)}
    )
    assert len(settings.keyring) == 1


def test_public_key_file_errors_name_it_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "public.pem"
    exc = config_error("public_key_file", algorithms=["RS256"], public_key_file=str(missing))
    assert str(exc) == f"public_key_file: cannot read '{missing}' (No such file or directory)"
    key = SigningKey.generate("RS256")
    path = _pem_file(tmp_path, key)
    exc = config_error(
        "public_key_file", algorithms=["RS256"], public_key=key.public_pem, public_key_file=path
    )
    assert "either public_key or public_key_file" in str(exc)
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("hello\n", encoding="utf-8")
    exc = config_error("public_key_file", algorithms=["RS256"], public_key_file=not_pem)
    assert "no PEM block found" in str(exc)
    config_error("public_key_file", algorithms=["RS256"], public_key_file=[])
    config_error(
        "jwks_url", algorithms=["RS256"], jwks_url="https://x.test/j", public_key_file=path
    )


def test_secret_file_error_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "y"
    exc = config_error("secret_file", algorithms=["HS256"], secret_file=missing)
    assert str(exc) == f"secret_file: cannot read '{missing}' (No such file or directory)"
    exc = config_error("secret_file", algorithms=["HS256"], secret_file=tmp_path)
    assert str(exc) == f"secret_file: cannot read '{tmp_path}' (Is a directory)"


def test_a_path_control_character_cannot_break_the_error_line(tmp_path: Path) -> None:
    exc = config_error("secret_file", algorithms=["HS256"], secret_file=str(tmp_path / "a\nb"))
    assert "\n" not in str(exc)
    assert "a\\nb" in str(exc)


@pytest.mark.parametrize(
    "value", ["public.pem", "./keys/idp.pem", "/etc/jwt/public.pem", "~/idp.crt", "C:\\keys\\k.pub"]
)
def test_a_path_given_as_public_key_gets_a_hint(value: str) -> None:
    exc = config_error("public_key", algorithms=["RS256"], public_key=value)
    assert str(exc) == "public_key: looks like a file path: use public_key_file to read a PEM file"


@pytest.mark.parametrize("value", ["", "   \n", b""])
def test_an_empty_public_key_says_it_is_empty(value: str | bytes) -> None:
    exc = config_error("public_key", algorithms=["RS256"], public_key=value)
    assert "is empty" in str(exc)
    assert "no PEM block" not in str(exc)


def test_not_a_pem_and_not_a_path_keeps_the_plain_message() -> None:
    exc = config_error("public_key", algorithms=["RS256"], public_key="MIIBIjANBgkqhkiG9w0B")
    assert str(exc) == "public_key: no PEM block found (-----BEGIN ...-----)"
    key = SigningKey.generate("RS256")
    exc = config_error("public_key", algorithms=["RS256"], public_key=[key.public_pem, ""])
    assert str(exc).startswith("public_key: entry #2 is empty")


def test_an_empty_public_key_from_django_style_settings() -> None:
    # JWT_AUDIT = {"PUBLIC_KEY": os.environ.get("JWT_PUBLIC_KEY", "")} with the variable unset
    with pytest.raises(ConfigurationError, match=r"^public_key: is empty"):
        Settings.from_mapping({"ALGORITHMS": ["RS256"], "PUBLIC_KEY": ""})


def test_environment_errors_name_the_variable_set() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"JWT_AUDIT_ALGORITHMS": "RS256", "JWT_AUDIT_PUBKEY": "x"})
    assert str(info.value) == (
        "JWT_AUDIT_PUBKEY: unknown option; did you mean 'JWT_AUDIT_PUBLIC_KEY'?"
    )
    assert info.value.option == "JWT_AUDIT_PUBKEY"
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"JWT_AUDIT_ALGORITHMS": "RS256", "JWT_AUDIT_PUBLIC_KEY": ""})
    assert str(info.value).startswith("JWT_AUDIT_PUBLIC_KEY: is empty")
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"JWT_AUDIT_ALGORITHMS": "HS256", "JWT_AUDIT_SECRET_FILE": "/x/y"})
    assert str(info.value) == (
        "JWT_AUDIT_SECRET_FILE: cannot read '/x/y' (No such file or directory)"
    )
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"APP_SECRET": "s" * 32}, prefix="APP_")
    assert info.value.option == "APP_ALGORITHMS"  # the variable to set
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"JWT_AUDIT_ALGORITHMS": "HS256", "JWT_AUDIT_ZZZZ": "1"})
    assert str(info.value) == "JWT_AUDIT_ZZZZ: unknown option"


def test_environment_errors_inside_providers_name_the_variable() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"JWT_AUDIT_PROVIDERS": '[{"issuer": "https://a.test/"}]'})
    assert info.value.option.startswith("JWT_AUDIT_PROVIDERS[0].")
