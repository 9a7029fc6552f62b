"""jws: the compact JWS read strictly, against the standard library's answers."""

from __future__ import annotations

import base64
import itertools
import random
import re

import pytest

from jwt_audit_middleware import jws
from jwt_audit_middleware.errors import Denied
from jwt_audit_middleware.jws import extract_token


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- extract_token: the Authorization header ---------------------------------


@pytest.mark.parametrize(
    "value",
    ["Bearer abc.def.ghi", "bearer abc.def.ghi", "BEARER abc.def.ghi", "  Bearer abc.def.ghi "],
)
def test_extract_token_returns_the_token(value: str) -> None:
    assert extract_token([value], 8192) == "abc.def.ghi"


def test_extract_token_size_limit_is_exact() -> None:
    assert extract_token(["Bearer " + "a" * 100], 100) == "a" * 100
    with pytest.raises(Denied) as info:
        extract_token(["Bearer " + "a" * 101], 100)
    assert info.value.reason == "token_too_large"


@pytest.mark.parametrize(
    "value",
    ["Bearer a.b.c", "Bearer a.b.c\u00e9", "Bearer a.b.c\x00", "Bearer a+b.c", "Bearer a.b.c~"],
)
def test_extract_token_alphabet_matches_the_regular_expression(value: str) -> None:
    token = value[7:]
    expected = re.fullmatch(r"[A-Za-z0-9_\-.]+", token) is not None
    try:
        got: object = extract_token([value], 8192) == token
    except Denied as denied:
        got = denied.reason
    assert got == (True if expected else "invalid_request")


def test_extract_token_alphabet_random_texts() -> None:
    rnd = random.Random(8)
    pool = URLSAFE + ODD + "~`'\"\\,;:"
    for _ in range(3000):
        token = "".join(rnd.choice(pool) for _ in range(rnd.randrange(1, 10))).strip(" \t")
        if not token or " " in token:
            continue
        expected = re.fullmatch(r"[A-Za-z0-9_\-.]+", token) is not None
        try:
            extract_token([f"Bearer {token}"], 8192)
            got = True
        except Denied:
            got = False
        assert got == expected, token


# -- split: three segments, header and payload non-empty ---------------------


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "a.b.",
        "..",
        "...",
        "abc",
        "",
        "a.b.c.",
        "ab.cd.ef",
    ],
)
def test_split_matches_str_split(token: str) -> None:
    parts = token.split(".")
    whole = len(parts) == 3 and all(parts[:2])  # the signature may be empty (alg none)
    expected: object = tuple(parts) if whole else "malformed_token"
    try:
        got: object = jws.split(token)
    except Denied as denied:
        got = denied.reason
    assert got == expected


def test_split_random_texts() -> None:
    rnd = random.Random(9)
    for _ in range(5000):
        token = "".join(rnd.choice("ab.") for _ in range(rnd.randrange(8)))
        parts = token.split(".")
        try:
            got: object = jws.split(token)
        except Denied:
            got = None
        whole = len(parts) == 3 and all(parts[:2])
        assert got == (tuple(parts) if whole else None), token


# -- the hand-rolled decoding: the same answers as the library paths it replaced -----


URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ODD = "+/=!. \n\t\x00\xe9\u2028"


def reference_signature(segment: str) -> bytes | None:
    """What the verifier did before jws.py: urlsafe_b64decode, then a re-encode must match."""
    try:
        signature = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except ValueError:  # binascii.Error, or a text that is not ASCII
        return None
    if base64.urlsafe_b64encode(signature).rstrip(b"=") != segment.encode():
        return None
    return signature


def lean_signature(segment: str) -> bytes | None:
    try:
        return jws.signature_bytes(segment)
    except ValueError:
        return None


def test_signature_decoding_matches_the_reference_for_every_short_text() -> None:
    for length in range(4):
        for chars in itertools.product(URLSAFE + ODD, repeat=length):
            segment = "".join(chars)
            assert lean_signature(segment) == reference_signature(segment), segment


def test_signature_decoding_matches_the_reference_on_mutated_signatures() -> None:
    rnd = random.Random(6)
    for _ in range(5000):
        text = b64(rnd.randbytes(rnd.choice((32, 33, 34, 64, 256))))
        assert lean_signature(text) == reference_signature(text) is not None
        at = rnd.randrange(len(text))
        mutated = text[:at] + rnd.choice(URLSAFE + ODD) + text[at + 1 :]
        assert lean_signature(mutated) == reference_signature(mutated), mutated
        for cut in (text[:-1], text + "=", text + "==", "=" + text, text + "A"):
            assert lean_signature(cut) == reference_signature(cut), cut


@pytest.mark.parametrize(
    "segment",
    [
        "QQ",  # "A": canonical
        "QR",  # same byte, unused bits set
        "QUI",  # "AB": canonical
        "QUJ",  # unused bits set
        "QUJD",  # no unused bits
        "QQ==",  # padded
        "Q",  # 1 more than a multiple of 4
        "QU+D",  # base64, not base64url
        "QU/D",
        "QU D",
        "QU.D",
        "QUé",
        "",
    ],
)
def test_signature_decoding_cases(segment: str) -> None:
    assert lean_signature(segment) == reference_signature(segment)


def test_segment_decoding_matches_urlsafe_b64decode() -> None:
    rnd = random.Random(7)
    texts = ["", "e30", "eyJhIjoxfQ", "e30=", "e3 0", "e3é0", "a", "ab-_", "ab+/"]
    texts += [b64(rnd.randbytes(rnd.randrange(1, 80))) for _ in range(300)]
    texts += [
        "".join(rnd.choice(URLSAFE + ODD) for _ in range(rnd.randrange(12))) for _ in range(3000)
    ]
    for text in texts:
        try:
            expected: bytes | str = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            expected = "ValueError"
        try:
            got: bytes | str = jws.b64decode(text)
        except ValueError:
            got = "ValueError"
        assert got == expected, text


JSON_TEXTS = [
    '{"alg":"RS256"}',
    ' {"alg":"RS256"}',
    '{"alg":"RS256"} ',
    '{"alg":"RS256"}\r\n\t ',
    '{"alg":"RS256"}x',
    '{"alg":"RS256"} {}',
    '{"alg":"RS256"}\x0c',  # form feed is not JSON whitespace
    '{"alg":"RS256","alg":"HS256"}',
    '{"a":{"b":1,"b":2}}',
    '{"a": x}',
    '{"a": [x]}',
    '{"a": {"b": x}}',
    '{"a": NaN}',
    '{"a": -Infinity}',
    '{"a": 1e999}',
    '{"a": -1e999}',
    '{"a": 1.5}',
    '{"a": "\x01"}',
    '{"a": "\\ud800"}',
    "{",
    "{}",
    "",
    " ",
    "[]",
    '["a"]',
    "1",
    "null",
    '"{}"',
    "{" * 100_000,
    '{"a":' * 100_000,
]


def reference_json(text: str) -> object:
    """json.loads with the verifier's hooks and its error handling, the way it was."""
    try:
        value = jws.decode_json(text)
    except (ValueError, RecursionError):
        return "malformed"
    return value if isinstance(value, dict) else "not an object"


@pytest.mark.parametrize("text", JSON_TEXTS, ids=range(len(JSON_TEXTS)))
def test_json_segments_decode_like_the_json_module(text: str) -> None:
    segment = b64(text.encode("utf-8", "surrogatepass"))
    try:
        got: object = jws.json_object(segment, "header")
    except Denied as denied:
        got = (denied.reason, "JSON object" in denied.detail)
    expected = reference_json(text)
    if isinstance(expected, str):
        expected = ("malformed_token", expected == "not an object")
    assert got == expected


def test_json_segment_that_is_not_utf8_is_malformed() -> None:
    with pytest.raises(Denied) as info:
        jws.json_object(b64(b'{"a":"\xff"}'), "payload")
    assert info.value.reason == "malformed_token"
