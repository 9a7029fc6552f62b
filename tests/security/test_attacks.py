"""Every known attack on a JWT bearer check, one parametrised test each, through both middlewares.

Tokens PyJWT would refuse to make are composed by hand (``attack_kit``).  Each
row asserts the contract's status and reason (§5), exactly one event, and that
the token (its text, its signature, its signing input) is in no output: the
event, its ``JSONFormatter`` line, the plain log line, the response.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from attack_kit import (
    Channel,
    Header,
    assert_allowed,
    assert_denied,
    b64,
    bearer,
    claims,
    compose,
    sign,
    signed,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from jwks_server import JWKSServer

from jwt_audit_middleware.testing import SigningKey, jwks_document

ISSUER = "https://idp.example"
AUDIENCE = "api"
#: the order of the P-256 group: an ECDSA signature's r and s must lie in [1, n - 1]
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture(params=["asgi", "wsgi"])
def channel(request: pytest.FixtureRequest) -> Channel:
    return Channel(request.param)


@dataclass
class Kit:
    """The run's keys, an attacker's keys, and the configurations under attack."""

    rsa: SigningKey  # kid rs256-1, trusted
    es: SigningKey  # kid es256-1, trusted
    hs: SigningKey
    attacker: SigningKey  # RS256, same kid as rsa, not trusted
    attacker_es: SigningKey

    def rs256(self, **extra: Any) -> dict[str, Any]:
        return {"algorithms": ["RS256"], "jwks": jwks_document(self.rsa), **extra}

    def es256(self, **extra: Any) -> dict[str, Any]:
        return {"algorithms": ["ES256"], "jwks": jwks_document(self.es), **extra}

    def rs_header(self, **extra: Any) -> dict[str, Any]:
        return {"alg": "RS256", "typ": "JWT", "kid": "rs256-1", **extra}


@pytest.fixture(scope="module")
def kit(keys: dict[str, SigningKey], other_rsa_key: SigningKey) -> Kit:
    return Kit(
        keys["RS256"],
        keys["ES256"],
        keys["HS256"],
        other_rsa_key,
        SigningKey.generate("ES256", kid="es256-1"),
    )


def test_the_trusted_key_is_accepted_by_both(channel: Channel, kit: Kit) -> None:
    """The baseline every refusal below is measured against."""
    token = signed(kit.rsa, kit.rs_header(), claims())
    assert_allowed(channel.send(kit.rs256(), bearer(token)), token)


# -- alg "none" --------------------------------------------------------------------


NONE_SPELLINGS = ["none", "None", "NONE", "nOnE"]
#: what follows the second dot: nothing, garbage, a real RS256 signature of header.payload
NONE_SIGNATURES = ["empty", "garbage", "rs256"]


@pytest.mark.parametrize("signature", NONE_SIGNATURES)
@pytest.mark.parametrize("alg", NONE_SPELLINGS)
def test_alg_none_is_refused_in_any_casing(
    channel: Channel, kit: Kit, alg: str, signature: str
) -> None:
    head = compose({"alg": alg, "typ": "JWT"}, claims(sub="admin")).rsplit(".", 1)[0]
    sig = {
        "empty": "",
        "garbage": b64(b"\x00" * 7 + b"not a signature at all"),
        "rs256": b64(sign(kit.rsa, "RS256", head)),
    }[signature]
    token = f"{head}.{sig}"
    event = assert_denied(channel.send(kit.rs256(), bearer(token)), "algorithm_not_allowed", token)
    assert event["subject"] is None


# -- signatures: null, truncated, psychic -------------------------------------------


#: the real signature in, the forged one out
SIGNATURE_VARIANTS: dict[str, Callable[[bytes], bytes]] = {
    "null-full-length": lambda sig: b"\x00" * len(sig),
    "null-one-byte": lambda sig: b"\x00",
    "literal-null": lambda sig: b"null",
    "truncated-by-one-byte": lambda sig: sig[:-1],
    "truncated-to-half": lambda sig: sig[: len(sig) // 2],
    "truncated-to-one-byte": lambda sig: sig[:1],
    "extended-by-one-byte": lambda sig: sig + b"\x00",
    "last-bit-flipped": lambda sig: sig[:-1] + bytes([sig[-1] ^ 1]),
}


@pytest.mark.parametrize("variant", list(SIGNATURE_VARIANTS))
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_null_and_truncated_signatures(channel: Channel, kit: Kit, alg: str, variant: str) -> None:
    key, options = (kit.rsa, kit.rs256()) if alg == "RS256" else (kit.es, kit.es256())
    head = compose({"alg": alg, "kid": key.kid}, claims()).rsplit(".", 1)[0]
    good = sign(key, alg, head)
    token = f"{head}.{b64(SIGNATURE_VARIANTS[variant](good))}"
    assert_denied(channel.send(options, bearer(token)), "bad_signature", token)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_an_allowed_alg_with_an_empty_signature(channel: Channel, kit: Kit, alg: str) -> None:
    """Unsigned is only ever ``none``'s shape: for an allowed alg it is malformed."""
    key, options = (kit.rsa, kit.rs256()) if alg == "RS256" else (kit.es, kit.es256())
    token = compose({"alg": alg, "kid": key.kid}, claims(sub="admin"), "")
    assert_denied(channel.send(options, bearer(token)), "malformed_token", token)


PSYCHIC = {
    "r=s=0": (0, 0),
    "r=s=n": (P256_ORDER, P256_ORDER),
    "r=0,s=n": (0, P256_ORDER),
    "r=n,s=0": (P256_ORDER, 0),
    "r=s=n+1": (P256_ORDER + 1, P256_ORDER + 1),  # 1 mod n: still not a signature
}


@pytest.mark.parametrize("r_s", list(PSYCHIC.values()), ids=list(PSYCHIC))
def test_es256_psychic_signatures(channel: Channel, kit: Kit, r_s: tuple[int, int]) -> None:
    """CVE-2022-21449: (0, 0) verified every message in Java 15-18; n is 0 mod n."""
    r, s = r_s
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    token = compose({"alg": "ES256", "kid": "es256-1"}, claims(sub="admin"), signature)
    assert_denied(channel.send(kit.es256(), bearer(token)), "bad_signature", token)


# -- HMAC keyed with the public key ----------------------------------------------------


def _public_key_texts(key: SigningKey) -> dict[str, bytes]:
    public = key.private.public_key()
    spki_der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    texts = {
        "pem": key.public_pem.encode(),
        "pem-no-newline": key.public_pem.rstrip("\n").encode(),
        "der": spki_der,
        "jwk-json": json.dumps(key.jwk()).encode(),
        "jwk-json-compact": json.dumps(key.jwk(), separators=(",", ":")).encode(),
        "jwks-json": json.dumps(jwks_document(key)).encode(),
    }
    if key.alg == "RS256":
        texts["pkcs1-pem"] = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
        texts["pkcs1-der"] = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )
    else:
        texts["uncompressed-point"] = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return texts


KEY_FORMS = ["pem", "pem-no-newline", "der", "jwk-json", "jwk-json-compact", "jwks-json"]
RS_FORMS = [("RS256", f) for f in [*KEY_FORMS, "pkcs1-pem", "pkcs1-der"]]
ES_FORMS = [("ES256", f) for f in [*KEY_FORMS, "uncompressed-point"]]


@pytest.mark.parametrize("hmac_alg", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize(("target", "form"), RS_FORMS + ES_FORMS)
def test_hmac_signed_with_the_public_key(
    channel: Channel, kit: Kit, target: str, form: str, hmac_alg: str
) -> None:
    """The algorithm confusion of CVE-2015-9235: an RS/ES config must never run HMAC."""
    key = kit.rsa if target == "RS256" else kit.es
    secret = _public_key_texts(key)[form]
    public_pem_options = {"algorithms": [target], "public_key": key.public_pem}
    for options in (public_pem_options, {"algorithms": [target], "jwks": jwks_document(key)}):
        token = signed(secret, {"alg": hmac_alg, "kid": key.kid}, claims(sub="admin"))
        assert_denied(channel.send(options, bearer(token)), "algorithm_not_allowed", token)


@pytest.mark.parametrize("form", ["pem", "der", "jwk-json"])
def test_hmac_signed_with_the_public_key_where_hmac_is_also_allowed(
    channel: Channel, kit: Kit, form: str
) -> None:
    """RS256 and HS256 both allowed: the HMAC key is the secret, never the public key."""
    secret = _public_key_texts(kit.rsa)[form]
    options = {"algorithms": ["RS256", "HS256"], "public_key": kit.rsa.public_pem}
    options["secret"] = kit.hs.secret
    token = signed(secret, {"alg": "HS256"}, claims(sub="admin"))
    assert_denied(channel.send(options, bearer(token)), "bad_signature", token)


# -- keys offered by the token itself ---------------------------------------------------


def _self_signed_certificate(key: SigningKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example")])
    now = time.time()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - 3600))
        .not_valid_after(_utc(now + 3600))
        .sign(key.private, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def _utc(stamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)


@pytest.fixture
def attacker_server(other_rsa_key: SigningKey) -> Iterator[JWKSServer]:
    """The attacker's web server on 127.0.0.1, serving the attacker's JWKS; counts hits."""
    server = JWKSServer(jwks_document(other_rsa_key))
    yield server
    server.close()


EMBEDDED = ["jwk", "jku", "x5u", "x5c", "all-four"]


@pytest.mark.parametrize("kid", ["rs256-1", "attacker-1"])
@pytest.mark.parametrize("source", ["jwks", "jwks_url"])
@pytest.mark.parametrize("offered", EMBEDDED)
def test_keys_offered_in_the_header_are_never_used_or_fetched(
    channel: Channel,
    kit: Kit,
    attacker_server: JWKSServer,
    server: JWKSServer,
    offered: str,
    source: str,
    kid: str,
) -> None:
    attacker = kit.attacker
    jwk = {**attacker.jwk(), "kid": kid}
    found = {
        "jwk": jwk,
        "jku": attacker_server.url,
        "x5u": attacker_server.url.rsplit("/", 1)[0] + "/cert.pem",
        "x5c": [base64.b64encode(_self_signed_certificate(attacker)).decode()],
    }
    extra = found if offered == "all-four" else {offered: found[offered]}
    token = signed(attacker, {"alg": "RS256", "kid": kid, **extra}, claims(sub="admin"))
    # a remote key set: an unknown kid refetches the configured URL, and nothing else
    remote = {"algorithms": ["RS256"], "jwks_url": server.url}
    options = kit.rs256() if source == "jwks" else remote
    reason = "bad_signature" if kid == "rs256-1" else "unknown_key"
    assert_denied(channel.send(options, bearer(token)), reason, token)
    assert attacker_server.hits == 0
    assert all(path == server.paths[0] for path in server.paths)


# -- kid injection ----------------------------------------------------------------------


KIDS = {
    "path-traversal": "../../etc/passwd",
    "path-traversal-deep": "../../../../../../../../dev/null",
    "absolute-path": "/dev/null",
    "sql-or": "' OR 1=1--",
    "sql-union": "x' UNION SELECT 'secret' AS key --",
    "crlf": "rs256-1\r\nX-Injected: yes",
    "nul": "rs256-1\x00",
    "command": "$(curl 127.0.0.1)|id;`id`",
    "10kb": "A" * 10_240,
    "10kb-traversal": "../" * 3414,
}


@pytest.mark.parametrize("signer", ["attacker", "trusted"])
@pytest.mark.parametrize("kid", list(KIDS.values()), ids=list(KIDS))
def test_kid_injection(channel: Channel, kit: Kit, kid: str, signer: str) -> None:
    key = kit.attacker if signer == "attacker" else kit.rsa
    token = signed(key, {"alg": "RS256", "kid": kid}, claims(sub="admin"))
    reason = "malformed_token" if len(kid) > 256 else "unknown_key"
    options = kit.rs256(max_token_bytes=65_536)  # the kid itself, not the size, is refused
    event = assert_denied(channel.send(options, bearer(token)), reason, token)
    assert event["kid"] is None or (event["kid"].isprintable() and len(event["kid"]) <= 257)


def test_kid_naming_an_empty_hmac_key_file(channel: Channel, kit: Kit) -> None:
    """The classic: ``kid`` = ``/dev/null`` and an HMAC over the empty key."""
    token = signed(b"", {"alg": "HS256", "kid": "/dev/null"}, claims(sub="admin"))
    assert_denied(channel.send(kit.rs256(), bearer(token)), "algorithm_not_allowed", token)


@pytest.mark.parametrize("kid", [123, ["rs256-1"], {"k": "rs256-1"}, True], ids=repr)
def test_kid_of_the_wrong_type(channel: Channel, kit: Kit, kid: object) -> None:
    token = signed(kit.rsa, {"alg": "RS256", "kid": kid}, claims())
    assert_denied(channel.send(kit.rs256(), bearer(token)), "malformed_token", token)


# -- claims -----------------------------------------------------------------------------


WRONG_TYPES: dict[str, dict[str, Any]] = {
    "exp-string": {"exp": "4102444800"},
    "exp-word": {"exp": "never"},
    "exp-bool": {"exp": True},
    "exp-list": {"exp": [4102444800]},
    "exp-object": {"exp": {"$gt": 0}},
    "nbf-string": {"nbf": "0"},
    "iat-string": {"iat": "now"},
    "aud-number": {"aud": 1},
    "aud-list-of-numbers": {"aud": [1]},
    "aud-empty-list": {"aud": []},
    "aud-object": {"aud": {"api": True}},
    "iss-list": {"iss": [ISSUER]},
    "iss-number": {"iss": 1},
    "sub-number": {"sub": 1},
    "sub-list": {"sub": ["alice", "admin"]},
    "jti-number": {"jti": 5},
}


@pytest.mark.parametrize("changes", list(WRONG_TYPES.values()), ids=list(WRONG_TYPES))
def test_claims_of_the_wrong_type(channel: Channel, kit: Kit, changes: dict[str, Any]) -> None:
    payload = {**claims(iss=ISSUER, aud=AUDIENCE), **changes}
    token = signed(kit.rsa, kit.rs_header(), payload)
    options = kit.rs256(issuer=ISSUER, audience=AUDIENCE)
    assert_denied(channel.send(options, bearer(token)), "malformed_token", token)


@pytest.mark.parametrize("exp", ["absent", None], ids=["absent", "null"])
def test_missing_exp(channel: Channel, kit: Kit, exp: object) -> None:
    payload = claims()
    if exp == "absent":
        del payload["exp"]
    else:
        payload["exp"] = exp
    token = signed(kit.rsa, kit.rs_header(), payload)
    assert_denied(channel.send(kit.rs256(), bearer(token)), "missing_claim", token)


# -- typ --------------------------------------------------------------------------------


TYPES: list[tuple[object, bool]] = [
    ("at+jwt", True),
    ("at+JWT", True),
    ("AT+JWT", True),
    ("application/at+jwt", True),
    ("Application/AT+JWT", True),
    ("JWT", False),
    ("jwt", False),
    ("application/jwt", False),
    ("at+jwt2", False),
    ("jwt+at", False),
    ("", False),
    (None, False),
    (["at+jwt"], False),
]


@pytest.mark.parametrize(("typ", "accepted"), TYPES, ids=[repr(t) for t, _ in TYPES])
def test_typ_confusion(channel: Channel, kit: Kit, typ: object, accepted: bool) -> None:
    """RFC 9068 §4: an access token says ``at+jwt`` (either form, any case)."""
    header: dict[str, Any] = {"alg": "RS256", "kid": "rs256-1"}
    if typ is not None:
        header["typ"] = typ
    token = signed(kit.rsa, header, claims())
    outcome = channel.send(kit.rs256(token_type="at+jwt"), bearer(token))
    if accepted:
        assert_allowed(outcome, token)
    else:
        assert_denied(outcome, "invalid_type", token)


# -- crit -------------------------------------------------------------------------------


CRIT: dict[str, dict[str, Any]] = {
    "exp": {"crit": ["exp"], "exp": 1},
    "b64": {"crit": ["b64"], "b64": False},
    "unknown": {"crit": ["urn:example:must-understand"]},
    "empty-list": {"crit": []},
    "not-a-list": {"crit": "b64"},
    "null": {"crit": None},
}


@pytest.mark.parametrize("extra", list(CRIT.values()), ids=list(CRIT))
def test_unknown_crit(channel: Channel, kit: Kit, extra: dict[str, Any]) -> None:
    """RFC 7515 §4.1.11: no extension is understood, so any ``crit`` is refused."""
    token = signed(kit.rsa, kit.rs_header(**extra), claims())
    assert_denied(channel.send(kit.rs256(), bearer(token)), "malformed_token", token)


# -- the compact serialisation ----------------------------------------------------------


def _segments(kit: Kit) -> dict[str, str]:
    good = signed(kit.rsa, kit.rs_header(), claims())
    head, payload, sig = good.split(".")
    jwe_header = b64({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "rs256-1"})
    return {
        "1-segment": head + payload + sig,
        "1-segment-header": head,
        "2-segments": f"{head}.{payload}",
        "2-segments-signature": f"{head}.{sig}",
        "4-segments": f"{good}.{sig}",
        "4-segments-empty": f"{good}.",
        "5-segments-jwe": f"{jwe_header}.{b64(b'k' * 256)}.{b64(b'iv' * 6)}.{payload}.{sig[:22]}",
        "6-segments": f"{good}.{good.split('.', 1)[0]}.{sig}",
        "empty-header": f".{payload}.{sig}",
        "empty-payload": f"{head}..{sig}",
        "dots-only": "..",
        "leading-dot": f".{good}",
    }


SEGMENT_ROWS = [
    "1-segment",
    "1-segment-header",
    "2-segments",
    "2-segments-signature",
    "4-segments",
    "4-segments-empty",
    "5-segments-jwe",
    "6-segments",
    "empty-header",
    "empty-payload",
    "dots-only",
    "leading-dot",
]


@pytest.mark.parametrize("row", SEGMENT_ROWS)
def test_segment_counts(channel: Channel, kit: Kit, row: str) -> None:
    token = _segments(kit)[row]
    assert_denied(channel.send(kit.rs256(), bearer(token)), "malformed_token", token)


def _encodings(kit: Kit) -> dict[str, tuple[bytes, str]]:
    """Rows: (the bytes after ``Bearer ``, the expected reason)."""
    header = kit.rs_header()
    good = signed(kit.rsa, header, claims())
    head, payload, sig = good.split(".")
    padded_head = b64(header) + "=" * (-len(b64(header)) % 4 or 4)
    std = good.replace("-", "+").replace("_", "/")
    if std == good:  # make sure the row has a character of the standard alphabet
        std = good[:-2] + "+/"
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    flipped = sig[:-1] + last[last.index(sig[-1]) ^ 1]
    invalid_utf8 = signed(kit.rsa, b'{"alg":"RS256","kid":"rs256-1","x":"\xff\xfe"}', claims())
    bom = signed(kit.rsa, b'\xef\xbb\xbf{"alg":"RS256","kid":"rs256-1"}', claims())
    payload_not_utf8 = signed(kit.rsa, header, b'{"sub":"\xc3\x28","exp":4102444800}')
    rows = {
        "padding-signature": ((good + "==").encode(), "invalid_request"),
        "padding-header": (f"{padded_head}.{payload}.{sig}".encode(), "invalid_request"),
        "standard-alphabet": (std.encode(), "invalid_request"),
        "space-inside": (f"{head}. {payload}.{sig}".encode(), "invalid_request"),
        "tab-inside": (f"{head}.{payload}\t.{sig}".encode(), "invalid_request"),
        "newline-inside": (f"{head}.\n{payload}.{sig}".encode(), "invalid_request"),
        "vertical-tab": (f"{good}\x0b".encode(), "invalid_request"),
        "non-ascii": (f"{head}é.{payload}.{sig}".encode(), "invalid_request"),
        "fullwidth-dot": (f"{head}\uff0e{payload}.{sig}".encode(), "invalid_request"),
        "invalid-utf8-bytes": (
            head.encode() + b"\xff\xfe." + f"{payload}.{sig}".encode(),
            "invalid_request",
        ),
        "percent-encoded": (good.replace(".", "%2E", 1).encode(), "invalid_request"),
        "header-not-utf8": (invalid_utf8.encode(), "malformed_token"),
        "header-bom": (bom.encode(), "malformed_token"),
        "payload-not-utf8": (payload_not_utf8.encode(), "malformed_token"),
        "non-canonical-signature": (f"{head}.{payload}.{flipped}".encode(), "malformed_token"),
    }
    odd_head = head + "A" * ((1 - len(head)) % 4)  # length 1 mod 4: never base64
    rows["header-length-1-mod-4"] = (f"{odd_head}.{payload}.{sig}".encode(), "malformed_token")
    return rows


ENCODING_ROWS = [
    "padding-signature",
    "padding-header",
    "standard-alphabet",
    "space-inside",
    "tab-inside",
    "newline-inside",
    "vertical-tab",
    "non-ascii",
    "fullwidth-dot",
    "invalid-utf8-bytes",
    "percent-encoded",
    "header-not-utf8",
    "header-bom",
    "payload-not-utf8",
    "non-canonical-signature",
    "header-length-1-mod-4",
]


@pytest.mark.parametrize("row", ENCODING_ROWS)
def test_encodings(channel: Channel, kit: Kit, row: str) -> None:
    raw, reason = _encodings(kit)[row]
    token = raw.decode("latin-1")
    assert_denied(channel.send(kit.rs256(), bearer(raw)), reason, token)


# -- JSON -------------------------------------------------------------------------------


def _json_rows(kit: Kit) -> dict[str, tuple[str, dict[str, Any]]]:
    """Rows: (token, extra options); every one is malformed_token."""
    rsa = kit.rsa
    exp = int(time.time()) + 300

    def nested(depth: int) -> bytes:
        return b"[" * depth + b"]" * depth

    def object_nested(depth: int) -> bytes:
        return b'{"a":' * depth + b"1" + b"}" * depth

    def rs(header: bytes | dict[str, Any], payload: bytes | dict[str, Any]) -> str:
        return signed(rsa, header, payload, alg="RS256")

    big = {"max_token_bytes": 1_000_000}
    head = kit.rs_header()
    return {
        "header-nested-1000": (compose(nested(1000), claims(), b"s" * 256), {}),
        "header-object-nested-1000": (
            compose(object_nested(1000), claims(), b"s" * 256),
            {"max_token_bytes": 16_384},
        ),
        "header-nested-100000": (compose(nested(100_000), claims(), b"s" * 256), big),
        "payload-nested-1000": (rs(head, nested(1000)), {}),
        "payload-nested-100000": (rs(head, nested(100_000)), big),
        "header-duplicate-alg": (rs(b'{"alg":"RS256","alg":"none","kid":"rs256-1"}', claims()), {}),
        "header-duplicate-kid": (
            rs(b'{"alg":"RS256","kid":"rs256-1","kid":"../x"}', claims()),
            {},
        ),
        "payload-duplicate-sub": (
            rs(head, f'{{"sub":"alice","sub":"admin","exp":{exp}}}'.encode()),
            {},
        ),
        "header-nan": (rs(b'{"alg":"RS256","kid":"rs256-1","x":NaN}', claims()), {}),
        "payload-nan-exp": (rs(head, b'{"sub":"alice","exp":NaN}'), {}),
        "payload-infinity-exp": (rs(head, b'{"sub":"alice","exp":Infinity}'), {}),
        "payload-minus-infinity-nbf": (
            rs(head, f'{{"sub":"alice","exp":{exp},"nbf":-Infinity}}'.encode()),
            {},
        ),
        "payload-1e999-exp": (rs(head, b'{"sub":"alice","exp":1e999}'), {}),
        "header-array": (rs(b'["RS256"]', claims()), {}),
        "header-null": (rs(b"null", claims()), {}),
        "header-string": (rs(b'"RS256"', claims()), {}),
        "payload-array": (rs(head, b'[{"sub":"alice"}]'), {}),
        "payload-number": (rs(head, b"4102444800"), {}),
        "header-trailing-data": (rs(b'{"alg":"RS256","kid":"rs256-1"}{}', claims()), {}),
        "payload-trailing-data": (rs(head, f'{{"sub":"a","exp":{exp}}}x'.encode()), {}),
        "payload-single-quotes": (rs(head, b"{'sub':'alice'}"), {}),
        "payload-comment": (rs(head, f'{{"exp":{exp}}}/*x*/'.encode()), {}),
        "header-no-alg": (rs(b'{"kid":"rs256-1"}', claims()), {}),
        "header-alg-not-a-string": (rs(b'{"alg":["RS256"],"kid":"rs256-1"}', claims()), {}),
    }


JSON_ROWS = [
    "header-nested-1000",
    "header-object-nested-1000",
    "header-nested-100000",
    "payload-nested-1000",
    "payload-nested-100000",
    "header-duplicate-alg",
    "header-duplicate-kid",
    "payload-duplicate-sub",
    "header-nan",
    "payload-nan-exp",
    "payload-infinity-exp",
    "payload-minus-infinity-nbf",
    "payload-1e999-exp",
    "header-array",
    "header-null",
    "header-string",
    "payload-array",
    "payload-number",
    "header-trailing-data",
    "payload-trailing-data",
    "payload-single-quotes",
    "payload-comment",
    "header-no-alg",
    "header-alg-not-a-string",
]


@pytest.mark.parametrize("row", JSON_ROWS)
def test_hostile_json(channel: Channel, kit: Kit, row: str) -> None:
    token, extra = _json_rows(kit)[row]
    assert_denied(channel.send(kit.rs256(**extra), bearer(token)), "malformed_token", token)


# -- size -------------------------------------------------------------------------------


MB = 1024 * 1024


@pytest.mark.parametrize(
    ("row", "size"),
    [("letters", 3 * MB), ("jws-shaped", 3 * MB), ("basic-scheme", 5 * MB), ("dots", 2 * MB)],
)
def test_multi_megabyte_tokens(channel: Channel, kit: Kit, row: str, size: int) -> None:
    """Refused before any parsing, whatever the value looks like (§3 max_token_bytes)."""
    if row == "letters":
        headers, token = bearer("a" * size), "a" * size
    elif row == "jws-shaped":
        token = compose(kit.rs_header(), {"sub": "alice", "pad": "x" * size}, b"s" * 256)
        headers = bearer(token)
    elif row == "dots":
        headers, token = bearer("." * size), "." * size
    else:
        token = "A" * size
        headers = [("Authorization", b"Basic " + token.encode())]
    assert_denied(channel.send(kit.rs256(), headers), "token_too_large", token)


def test_multi_megabyte_token_under_a_large_limit_is_checked_in_bounded_time(
    channel: Channel, kit: Kit
) -> None:
    """With ``max_token_bytes`` raised, a 4 MB forgery still costs one signature check."""
    token = signed(kit.attacker, kit.rs_header(), {**claims(), "pad": "x" * (3 * MB)})
    outcome = channel.send(kit.rs256(max_token_bytes=16 * MB), bearer(token))
    assert_denied(outcome, "bad_signature", token)


# -- the Authorization header -----------------------------------------------------------


def _header_rows(kit: Kit) -> dict[str, tuple[list[Header], str, list[str]]]:
    """Rows: (headers, expected reason, secrets that must not appear)."""
    good = signed(kit.rsa, kit.rs_header(), claims())
    other = signed(kit.rsa, kit.rs_header(), claims(sub="bob"))
    basic = "YWxpY2U6Y29ycmVjdCBob3JzZSBiYXR0ZXJ5"  # alice:correct horse battery

    def auth(value: str | bytes) -> list[Header]:
        return [("Authorization", value if isinstance(value, bytes) else value.encode())]

    return {
        "basic": (auth(f"Basic {basic}"), "unsupported_scheme", [basic]),
        "basic-with-token": (auth(f"Basic {good}"), "unsupported_scheme", [good]),
        "digest": (auth(f'Digest username="alice", response="{good}"'), "unsupported_scheme", []),
        "token-scheme": (auth(f"Token {good}"), "unsupported_scheme", [good]),
        "bearer-tab": (auth(f"Bearer\t{good}"), "invalid_request", [good]),
        "bearer-space-tab": (auth(f"Bearer \t{good}"), "invalid_request", [good]),
        "bearer-no-space": (auth(f"Bearer{good}"), "invalid_request", [good]),
        "two-headers": (
            [*auth(f"Bearer {good}"), *auth(f"Bearer {other}")],
            "invalid_request",
            [
                good,
                other,
            ],
        ),
        "two-identical-headers": (
            [*auth(f"Bearer {good}"), *auth(f"Bearer {good}")],
            "invalid_request",
            [good],
        ),
        "bearer-and-basic": (
            [*auth(f"Bearer {good}"), *auth(f"Basic {basic}")],
            "invalid_request",
            [
                good,
                basic,
            ],
        ),
        "comma-joined": (auth(f"Bearer {good}, Bearer {other}"), "invalid_request", [good, other]),
        "crlf-injection": (auth(f"Bearer {good}\r\nX-Injected: 1"), "invalid_request", [good]),
        "lf-inside": (auth(f"Bearer {good[:40]}\n{good[40:]}"), "invalid_request", [good]),
        "nul-after": (auth(f"Bearer {good}\x00"), "invalid_request", [good]),
        "nul-before": (auth(f"Bearer \x00{good}"), "invalid_request", [good]),
        "nul-scheme": (auth(f"Bearer\x00{good}"), "invalid_request", [good]),
        "cr-after-scheme": (auth(f"Bearer\r{good}"), "invalid_request", [good]),
        "empty": (auth(""), "invalid_request", []),
        "scheme-only": (auth("Bearer"), "invalid_request", []),
        "scheme-and-spaces": (auth("Bearer    "), "invalid_request", []),
        "utf8-bytes": (auth(b"Bearer " + "ä".encode() + good.encode()), "invalid_request", [good]),
    }


HEADER_ROWS = [
    "basic",
    "basic-with-token",
    "digest",
    "token-scheme",
    "bearer-tab",
    "bearer-space-tab",
    "bearer-no-space",
    "two-headers",
    "two-identical-headers",
    "bearer-and-basic",
    "comma-joined",
    "crlf-injection",
    "lf-inside",
    "nul-after",
    "nul-before",
    "nul-scheme",
    "cr-after-scheme",
    "empty",
    "scheme-only",
    "scheme-and-spaces",
    "utf8-bytes",
]


@pytest.mark.parametrize("row", HEADER_ROWS)
def test_authorization_header_forms(channel: Channel, kit: Kit, row: str) -> None:
    headers, reason, secrets = _header_rows(kit)[row]
    assert_denied(channel.send(kit.rs256(), headers), reason, *secrets)


def test_fingerprint_is_the_only_trace_of_a_refused_token(channel: Channel, kit: Kit) -> None:
    """The event names a refused token only by ``sha256:`` + 16 hex digits."""
    token = signed(kit.attacker, kit.rs_header(), claims(sub="admin"))
    event = assert_denied(channel.send(kit.rs256(), bearer(token)), "bad_signature", token)
    expected = "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    assert event["token_fingerprint"] == expected
    assert event["subject"] is None


@pytest.mark.parametrize(
    ("names", "build"),
    [
        (SEGMENT_ROWS, _segments),
        (ENCODING_ROWS, _encodings),
        (JSON_ROWS, _json_rows),
        (HEADER_ROWS, _header_rows),
    ],
    ids=["segments", "encodings", "json", "headers"],
)
def test_every_row_is_parametrised(kit: Kit, names: list[str], build: Callable[[Kit], Any]) -> None:
    assert names == list(build(kit))
