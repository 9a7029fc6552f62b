"""Key ring: JWKS filtering, PEM handling, candidate selection, algorithm confusion."""

from __future__ import annotations

import base64
import datetime
import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from jwt_audit_middleware import ConfigurationError
from jwt_audit_middleware import keys as keys_module
from jwt_audit_middleware.keys import (
    KeyRing,
    VerificationKey,
    bind_check,
    build_keyring,
    load_keyring,
    parse_jwks,
)
from jwt_audit_middleware.testing import SigningKey, jwks_document


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def kids(keys: list[VerificationKey] | KeyRing) -> set[str | None]:
    return {key.kid for key in (keys.keys if isinstance(keys, KeyRing) else keys)}


def with_kid(key: SigningKey, kid: str, **changes: Any) -> dict[str, Any]:
    jwk = key.jwk()
    jwk["kid"] = kid
    jwk.update(changes)
    return {k: v for k, v in jwk.items() if v is not None}


@pytest.fixture(scope="module")
def certificate_pem(rsa_key: SigningKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwt-audit test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(rsa_key.private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# -- JWKS filtering --------------------------------------------------------


def test_jwks_keeps_only_usable_signing_keys(keys: dict[str, SigningKey]) -> None:
    rsa_key, ec_key = keys["RS256"], keys["ES256"]
    document = {
        "keys": [
            with_kid(rsa_key, "good"),
            with_kid(rsa_key, "enc", use="enc"),
            with_kid(rsa_key, "ops-sign-only", key_ops=["sign"]),
            with_kid(rsa_key, "ops-encrypt", key_ops=["encrypt", "wrapKey"]),
            with_kid(rsa_key, "ops-verify", key_ops=["verify"]),
            with_kid(rsa_key, "rs512", alg="RS512"),
            with_kid(ec_key, "ec-not-allowed"),
            {"kty": "XYZ", "kid": "strange", "x": "abc"},
            {"kty": "RSA-OAEP", "kid": "strange-2"},
        ]
    }
    keys_found = parse_jwks(document, ["RS256"])
    assert kids(keys_found) == {"good", "ops-verify"}
    assert all(key.algorithms == frozenset({"RS256"}) for key in keys_found)


def test_jwks_alg_narrows_the_algorithms(keys: dict[str, SigningKey]) -> None:
    document = {"keys": [with_kid(keys["RS256"], "ps", alg="PS256")]}
    (key,) = parse_jwks(document, ["RS256", "PS256"])
    assert key.algorithms == frozenset({"PS256"})
    (both,) = parse_jwks({"keys": [with_kid(keys["RS256"], "any", alg=None)]}, ["RS256", "PS256"])
    assert both.algorithms == frozenset({"RS256", "PS256"})


def test_jwks_as_json_text(rsa_key: SigningKey) -> None:
    import json

    (key,) = parse_jwks(json.dumps(jwks_document(rsa_key)), ["RS256"])
    assert key.kid == "rs256-1"


@pytest.mark.parametrize(
    "document",
    [{"keys": "nope"}, {"not-keys": []}, ["keys"], "{not json", {"keys": [1]}],
)
def test_jwks_not_a_document(document: object) -> None:
    with pytest.raises(ValueError, match=r"JSON|JWKS|object"):
        parse_jwks(document, ["RS256"])


def test_jwks_with_nothing_usable(keys: dict[str, SigningKey]) -> None:
    with pytest.raises(ValueError, match="no signing key"):
        parse_jwks(jwks_document(keys["ES256"]), ["RS256"])


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_private_jwk_is_refused(keys: dict[str, SigningKey], alg: str) -> None:
    algorithm_key = keys[alg]
    jwk = algorithm_key.jwk()
    jwk["d"] = b64url(b"\x01" * 32)
    with pytest.raises(ValueError, match="private") as info:
        parse_jwks({"keys": [jwk]}, [alg])
    assert jwk["d"] not in str(info.value)


def test_private_rsa_jwk_with_only_crt_members_is_refused(rsa_key: SigningKey) -> None:
    jwk = rsa_key.jwk()
    jwk["p"] = b64url(b"\x02" * 16)
    with pytest.raises(ValueError, match="private"):
        parse_jwks({"keys": [jwk]}, ["RS256"])


def test_duplicate_kid_is_refused(keys: dict[str, SigningKey]) -> None:
    document = {"keys": [with_kid(keys["RS256"], "same"), with_kid(keys["PS256"], "same")]}
    with pytest.raises(ValueError, match="duplicate kid"):
        parse_jwks(document, ["RS256", "PS256"])


@pytest.mark.parametrize("kid", ["", 5, "k" * 257])
def test_invalid_kid_is_refused(rsa_key: SigningKey, kid: object) -> None:
    jwk = rsa_key.jwk()
    jwk["kid"] = kid
    with pytest.raises(ValueError, match="invalid kid"):
        parse_jwks({"keys": [jwk]}, ["RS256"])


@pytest.mark.parametrize(("alg", "length"), [("HS256", 31), ("HS384", 47), ("HS512", 32)])
def test_oct_key_too_short_is_refused(alg: str, length: int) -> None:
    secret = b"k" * length
    jwk = {"kty": "oct", "kid": "short", "alg": alg, "k": b64url(secret)}
    with pytest.raises(ValueError, match="too short") as info:
        parse_jwks({"keys": [jwk]}, [alg])
    assert jwk["k"] not in str(info.value)


def test_oct_key_long_enough_is_accepted() -> None:
    secret = b"k" * 64
    jwk = {"kty": "oct", "kid": "hmac", "k": b64url(secret)}
    (key,) = parse_jwks({"keys": [jwk]}, ["HS256", "HS512", "RS256"])
    assert key.key == secret
    assert key.algorithms == frozenset({"HS256", "HS512"})


def test_small_rsa_jwk_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    numbers = small.public_key().public_numbers()
    jwk = {
        "kty": "RSA",
        "kid": "small",
        "n": b64url(numbers.n.to_bytes(128, "big")),
        "e": b64url(numbers.e.to_bytes(3, "big")),
    }
    with pytest.raises(ValueError, match="2048"):
        parse_jwks({"keys": [jwk]}, ["RS256"])


def test_unparsable_jwk_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be parsed"):
        parse_jwks({"keys": [{"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}]}, ["RS256"])


def test_build_keyring_wraps_jwks_errors_as_configuration_error(rsa_key: SigningKey) -> None:
    document = {"keys": [with_kid(rsa_key, "a"), with_kid(rsa_key, "a")]}
    with pytest.raises(ConfigurationError) as info:
        build_keyring(["RS256"], jwks=document, jwks_option="jwks_file")
    assert info.value.option == "jwks_file"


# -- PEM -------------------------------------------------------------------


def test_certificate_pem_is_accepted(certificate_pem: str, rsa_key: SigningKey) -> None:
    ring = build_keyring(["RS256"], public_keys=certificate_pem)
    (key,) = ring.keys
    assert key.algorithms == frozenset({"RS256"})
    expected = rsa_key.private.public_key().public_numbers()
    assert key.key.public_numbers() == expected


def test_several_pem_blocks_in_one_string(keys: dict[str, SigningKey]) -> None:
    bundle = "\n".join(
        [
            "# comment lines between blocks are fine",
            str(keys["RS256"].public_pem),
            str(keys["ES256"].public_pem),
            str(keys["EdDSA"].public_pem),
        ]
    )
    ring = build_keyring(["RS256", "ES256", "EdDSA"], public_keys=bundle)
    assert len(ring) == 3
    assert sorted(sorted(k.algorithms)[0] for k in ring.keys) == ["ES256", "EdDSA", "RS256"]


def test_private_key_in_a_bundle_is_refused(keys: dict[str, SigningKey]) -> None:
    private = (
        keys["ES256"]
        .private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        .decode()
    )
    with pytest.raises(ConfigurationError, match=r"#2 .*private") as info:
        build_keyring(
            ["RS256", "ES256"], public_keys=str(keys["RS256"].public_pem) + "\n" + private
        )
    assert info.value.option == "public_key"
    assert private.splitlines()[1] not in str(info.value)


@pytest.mark.parametrize("value", [[], [42], 42, "no pem here"])
def test_public_keys_of_the_wrong_shape(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        build_keyring(["RS256"], public_keys=value)
    assert info.value.option == "public_key"


def test_corrupt_pem_block() -> None:
    pem = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ConfigurationError, match="cannot be parsed"):
        build_keyring(["RS256"], public_keys=pem)


# -- candidates ------------------------------------------------------------


def test_candidates_by_kid(keys: dict[str, SigningKey]) -> None:
    first = keys["RS256"]
    second = SigningKey.generate("RS256", kid="rs256-2")
    ring = build_keyring(["RS256"], jwks=jwks_document(first, second))
    (by_first,) = ring.candidates("RS256", "rs256-1")
    (by_second,) = ring.candidates("RS256", "rs256-2")
    assert by_first.kid == "rs256-1"
    assert by_second.kid == "rs256-2"
    assert by_first.key.public_numbers() == first.private.public_key().public_numbers()
    assert ring.candidates("RS256", "unknown") == ()
    assert ring.candidates("PS256", "rs256-1") == ()


def test_no_kid_uses_the_single_keyed_key(rsa_key: SigningKey) -> None:
    ring = build_keyring(["RS256"], jwks=jwks_document(rsa_key))
    (key,) = ring.candidates("RS256", None)
    assert key.kid == "rs256-1"


def test_no_kid_with_two_keyed_keys_gives_no_candidate(rsa_key: SigningKey) -> None:
    second = SigningKey.generate("RS256", kid="rs256-2")
    ring = build_keyring(["RS256"], jwks=jwks_document(rsa_key, second))
    assert ring.candidates("RS256", None) == ()


def test_anonymous_keys_are_tried_for_any_kid(
    rsa_key: SigningKey, other_rsa_key: SigningKey
) -> None:
    ring = build_keyring(
        ["RS256"], public_keys=rsa_key.public_pem, jwks=jwks_document(other_rsa_key)
    )
    anonymous = [k for k in ring.keys if k.kid is None]
    assert len(anonymous) == 1
    assert ring.candidates("RS256", "no-such-kid") == tuple(anonymous)
    by_kid = ring.candidates("RS256", "rs256-1")
    assert [k.kid for k in by_kid] == ["rs256-1", None]
    assert ring.candidates("RS256", None) == (anonymous[0], *(k for k in by_kid if k.kid))


def test_rsa_key_is_never_a_candidate_for_hmac(rsa_key: SigningKey) -> None:
    secret = b"s" * 32
    ring = build_keyring(
        ["HS256", "RS256"],
        secret=secret,
        public_keys=rsa_key.public_pem,
        jwks=jwks_document(SigningKey.generate("RS256", kid="jwks-rsa")),
    )
    for kid in (None, "jwks-rsa", "other"):
        hmac_keys = ring.candidates("HS256", kid)
        assert [k.key for k in hmac_keys] == [secret]
        for key in ring.candidates("RS256", kid):
            assert isinstance(key.key, rsa.RSAPublicKey)
            assert "HS256" not in key.algorithms


def test_hmac_secret_is_never_a_candidate_for_rs256(rsa_key: SigningKey) -> None:
    secret = b"s" * 32
    ring = build_keyring(["HS256", "RS256"], secret=secret, public_keys=rsa_key.public_pem)
    (rs_key,) = ring.candidates("RS256", None)
    assert not isinstance(rs_key.key, bytes)
    (hs_key,) = ring.candidates("HS256", None)
    assert hs_key.algorithms == frozenset({"HS256"})


def test_hmac_secret_alone_cannot_serve_rs256() -> None:
    with pytest.raises(ConfigurationError) as info:
        build_keyring(["HS256", "RS256"], secret=b"s" * 32)
    assert info.value.option == "algorithms"
    assert "RS256" in str(info.value)


def test_oct_jwk_never_a_candidate_for_rs256(rsa_key: SigningKey) -> None:
    oct_key = SigningKey.generate("HS256", kid="oct")
    ring = build_keyring(["HS256", "RS256"], jwks=jwks_document(oct_key, rsa_key))
    assert ring.candidates("RS256", "oct") == ()
    assert ring.candidates("HS256", "rs256-1") == ()
    (hs,) = ring.candidates("HS256", "oct")
    assert hs.key == oct_key.secret


# -- reprs -----------------------------------------------------------------


def test_reprs_never_show_key_material(rsa_key: SigningKey) -> None:
    secret = b"Very-Secret-HMAC-Key-0123456789!!"
    ring = build_keyring(["HS256", "RS256"], secret=secret, public_keys=rsa_key.public_pem)
    texts = [repr(ring), str(ring), *(repr(k) for k in ring.keys), repr(ring.keys)]
    modulus = rsa_key.private.public_key().public_numbers().n
    pem_body = str(rsa_key.public_pem).splitlines()[1]
    for text in texts:
        assert secret.decode() not in text
        assert secret.hex() not in text
        assert pem_body not in text
        assert str(modulus)[:32] not in text
        assert format(modulus, "x")[:32] not in text
    assert "HS256" in repr(ring.keys[0])
    assert "2 keys" in repr(ring)


# -- known bugs ------------------------------------------------------------------


@pytest.mark.parametrize("member", ["kty", "crv", "alg"])
def test_jwk_with_non_string_members_is_skipped_or_refused(
    keys: dict[str, SigningKey], member: str
) -> None:
    good = with_kid(keys["RS256"], "good")
    if member == "crv":
        bad = with_kid(keys["ES256"], "bad")
        bad["crv"] = [bad["crv"]]
    else:
        bad = with_kid(keys["RS256"], "bad")
        bad[member] = [bad[member]]
    document = {"keys": [good, bad]}
    found: list[VerificationKey] | None
    try:
        found = parse_jwks(document, ["RS256", "ES256"])
    except ValueError:
        found = None  # refused cleanly is acceptable too
    assert found is None or kids(found) == {"good"}
    option: str | None
    try:
        build_keyring(["RS256"], jwks=document)
    except ConfigurationError as exc:
        option = exc.option
    else:
        option = None
    assert option in (None, "jwks")


def test_a_pem_on_one_line_with_escaped_newlines_is_read(rsa_key: SigningKey) -> None:
    # how a PEM often sits in an .env file: JWT_AUDIT_PUBLIC_KEY="-----BEGIN ...\n..."
    one_line = (rsa_key.public_pem or "").strip().replace("\n", "\\n")
    assert "\n" not in one_line
    ring = build_keyring(["RS256"], public_keys=one_line)
    assert len(ring) == 1


# -- prepared signature checks ----------------------------------------------

CHECK_ALGS = ["HS256", "RS256", "PS256", "ES256", "ES384", "EdDSA"]


def public_or_secret(key: SigningKey) -> Any:
    return key.secret if key.alg.startswith("HS") else key.private.public_key()


@pytest.mark.parametrize("alg", CHECK_ALGS)
def test_bound_check_agrees_with_pyjwt(keys: dict[str, SigningKey], alg: str) -> None:
    key = keys[alg]
    algorithm = jwt.get_algorithm_by_name(alg)
    message = b"header.payload"
    signature = algorithm.sign(message, key.secret if alg.startswith("HS") else key.private)
    check = bind_check(alg, public_or_secret(key))
    verifying = algorithm.prepare_key(public_or_secret(key))
    cases = [(signature, message), (signature, b"header.payloaD")]
    cases += [(sig, message) for sig in (b"", signature[:-1], signature + b"\0")]  # wrong length
    for sig, msg in cases:
        assert check(sig, msg) is algorithm.verify(msg, verifying, sig)
    assert check(signature, message) is True
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert check(flipped, message) is False


@pytest.mark.parametrize(
    ("alg", "other"),
    [
        ("HS256", "RS256"),  # an RSA public key is never an HMAC secret
        ("RS256", "HS256"),
        ("RS256", "ES256"),
        ("PS256", "EdDSA"),
        ("ES256", "ES384"),  # the curve is bound too
        ("ES384", "ES256"),
        ("ES256", "RS256"),
        ("EdDSA", "ES256"),
        ("EdDSA", "HS256"),
    ],
)
def test_a_check_is_never_bound_to_a_key_of_another_type(
    keys: dict[str, SigningKey], alg: str, other: str
) -> None:
    with pytest.raises(ValueError, match="cannot verify"):
        bind_check(alg, public_or_secret(keys[other]))


def test_a_ring_refuses_a_key_bound_to_an_algorithm_it_cannot_verify(rsa_key: SigningKey) -> None:
    key = VerificationKey(rsa_key.private.public_key(), frozenset({"HS256"}))
    with pytest.raises(ValueError, match="cannot verify HS256"):
        KeyRing([key], ["HS256"])


def test_checks_follow_the_candidates(keys: dict[str, SigningKey]) -> None:
    rsa_key, other = keys["RS256"], SigningKey.generate("RS256", kid="rs256-2")
    ring = build_keyring(
        ["RS256", "HS256"],
        secret=keys["HS256"].secret,
        jwks=jwks_document(rsa_key, other),
    )
    for alg, kid in [
        ("RS256", "rs256-1"),
        ("RS256", "rs256-2"),
        ("RS256", None),
        ("RS256", "nope"),
        ("HS256", None),
        ("HS256", "rs256-1"),
        ("PS256", None),
    ]:
        candidates = ring.candidates(alg, kid)
        checks = ring.checks(alg, kid)
        assert len(checks) == len(candidates)
        algorithm = jwt.get_algorithm_by_name(alg)
        for candidate, check in zip(candidates, checks, strict=True):
            signer = {"rs256-1": rsa_key, "rs256-2": other}.get(candidate.kid or "")
            secret = keys["HS256"].secret if alg.startswith("HS") else None
            message = b"a.b"
            if secret is not None:
                assert check(algorithm.sign(message, secret), message)
            else:
                assert signer is not None
                assert check(algorithm.sign(message, signer.private), message)


def test_an_algorithm_pyjwt_adds_later_is_verified_through_its_own_verify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, object, bytes]] = []

    class Later:
        def verify(self, msg: bytes, key: object, sig: bytes) -> bool:
            calls.append((msg, key, sig))
            return sig == b"good"

    monkeypatch.setattr(keys_module, "get_algorithm_by_name", lambda alg: Later())
    check = bind_check("HS256", b"k" * 32)
    assert check(b"good", b"a.b") is True
    assert check(b"bad", b"a.b") is False
    assert calls == [(b"a.b", b"k" * 32, b"good"), (b"a.b", b"k" * 32, b"bad")]


# -- load_keyring: the one reader of key options and key files --------------

SECRET = b"0123456789abcdef0123456789abcdef"


def load_error(where: str, **options: Any) -> ConfigurationError:
    algorithms = options.pop("algorithms", ["HS256"])
    with pytest.raises(ConfigurationError) as raised:
        load_keyring(where, algorithms, **options)
    return raised.value


@pytest.mark.parametrize(
    ("ending", "kept"),
    [(b"\n", b""), (b"\r\n", b""), (b"\r", b"\r"), (b"\n\n", b"\n"), (b"", b"")],
)
def test_a_secret_file_loses_one_line_ending(tmp_path: Path, ending: bytes, kept: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + ending)
    loaded = load_keyring("", ["HS256"], secret_file=path)
    assert loaded.secret == SECRET + kept
    assert loaded.keyring.usable_algorithms() == frozenset({"HS256"})


def test_a_str_secret_becomes_bytes_and_a_mapping_a_dict_copy(rsa_key: SigningKey) -> None:
    document = MappingProxyType(jwks_document(rsa_key))
    loaded = load_keyring("", ["HS256", "RS256"], secret=SECRET.decode(), jwks=document)
    assert loaded.secret == SECRET
    assert type(loaded.jwks) is dict
    assert loaded.jwks == dict(document)


def test_a_jwks_file_is_kept_as_its_text(tmp_path: Path, rsa_key: SigningKey) -> None:
    text = json.dumps(jwks_document(rsa_key))
    path = tmp_path / "jwks.json"
    path.write_text(text, encoding="utf-8")
    loaded = load_keyring("providers[1]", ["RS256"], jwks_file=str(path))
    assert loaded.jwks == text
    assert kids(loaded.keyring) == {"rs256-1"}


def test_a_public_key_list_becomes_a_tuple(keys: dict[str, SigningKey]) -> None:
    pems = [keys["RS256"].public_pem, keys["ES256"].public_pem]
    loaded = load_keyring("", ["RS256", "ES256"], public_key=pems)
    assert loaded.public_key == tuple(pems)
    single = load_keyring("", ["RS256"], public_key=keys["RS256"].public_pem)
    assert single.public_key == keys["RS256"].public_pem


@pytest.mark.parametrize(
    ("where", "options", "option", "message"),
    [
        ("", {"secret": SECRET, "secret_file": "x"}, "secret_file", "either secret or"),
        (
            "",
            {"secret_file": "/nonexistent/secret"},
            "secret_file",
            "cannot read '/nonexistent/secret' (No such file or directory)",
        ),
        ("providers[1]", {"secret_file": 0}, "providers[1].secret_file", "file path, got int"),
        ("providers[1]", {"jwks_file": "/nonexistent"}, "providers[1].jwks_file", "cannot read"),
        ("providers[1]", {"jwks_file": ["a"]}, "providers[1].jwks_file", "file path"),
        ("", {"jwks": {"keys": []}, "jwks_file": "x"}, "jwks_file", "either jwks or"),
        ("providers[0]", {"secret": 12345}, "providers[0].secret", "expected str or bytes"),
        ("", {"secret": "\udcff" * 40}, "secret", "not valid Unicode"),
        ("", {"jwks": 5}, "jwks", "JWKS document"),
        ("", {"jwks": b"\xff{}"}, "jwks", "not UTF-8"),
        ("providers[2]", {"secret": b"short"}, "providers[2].secret", "needs at least"),
        ("", {}, "algorithms", "no key configured"),
    ],
)
def test_load_keyring_names_the_option_as_written(
    where: str, options: dict[str, Any], option: str, message: str
) -> None:
    error = load_error(where, **options)
    assert error.option == option
    assert str(error).startswith(f"{option}: ")
    assert message in str(error)


def test_errors_about_a_files_content_name_the_file_option(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"too-short-secret\n")
    error = load_error("providers[0]", secret_file=short)
    assert error.option == "providers[0].secret_file"
    assert "too-short-secret" not in str(error)
    not_json = tmp_path / "jwks.json"
    not_json.write_text("{not json", encoding="utf-8")
    assert load_error("", algorithms=["RS256"], jwks_file=not_json).option == "jwks_file"
    latin = tmp_path / "latin.json"
    latin.write_bytes(b"\xe9")
    error = load_error("", algorithms=["RS256"], jwks_file=latin)
    assert (error.option, str(error)) == ("jwks_file", "jwks_file: is not UTF-8 text")


def test_an_uncovered_algorithm_names_algorithms_option(rsa_key: SigningKey) -> None:
    pem = rsa_key.public_pem
    error = load_error("", algorithms=["RS256", "ES256"], public_key=pem)
    assert error.option == "algorithms"
    error = load_error(
        "providers[3]",
        algorithms=["RS256", "ES256"],
        public_key=pem,
        algorithms_option="public_key",
    )
    assert error.option == "providers[3].public_key"
    assert "ES256" in str(error)


def test_a_file_too_large_to_be_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge"
    with path.open("wb") as handle:
        handle.truncate(keys_module.MAX_KEY_FILE_BYTES + 1)  # sparse: no disk used
    error = load_error("", secret_file=path)
    assert error.option == "secret_file"
    assert "not a key file" in str(error)


def test_loaded_keys_repr_shows_no_material(tmp_path: Path) -> None:
    secret = os.urandom(32).hex().encode()
    path = tmp_path / "secret"
    path.write_bytes(secret + b"\n")
    loaded = load_keyring("", ["HS256"], secret_file=path)
    assert loaded.secret == secret
    assert secret.decode() not in repr(loaded)
    assert repr(loaded).startswith("LoadedKeys(KeyRing(1 keys")


def test_a_token_without_kid_is_tried_against_a_bounded_number_of_keys() -> None:
    # found in review: 100 kid-less ES256 keys cost 7.8 ms per forged token
    signers = [SigningKey.generate("ES256") for _ in range(100)]
    document = {"keys": [{k: v for k, v in s.jwk().items() if k != "kid"} for s in signers]}
    ring = KeyRing(parse_jwks(document, ["ES256"]), ["ES256"])
    assert len(ring) == 100
    assert len(ring.checks("ES256", None)) == keys_module.MAX_KIDLESS_CANDIDATES == 4
    assert len(ring.checks("ES256", "unknown")) == keys_module.MAX_KIDLESS_CANDIDATES
