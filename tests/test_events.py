"""Events: sanitising client strings, fingerprints, timestamps, logged claims."""

from __future__ import annotations

import datetime
import hashlib
import re

import pytest

from jwt_audit_middleware.events import (
    MAX_FIELD,
    MAX_LIST_ITEMS,
    REASONS,
    clean,
    clean_json,
    clean_list,
    clean_optional,
    copy_claims,
    fingerprint,
    identity_fields,
    rfc3339,
    scope_fields,
    verified_identity,
)

# -- clean() ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\rb", "a\\x0db"),
        ("a\nb", "a\\x0ab"),
        ("a\x1b[31mred", "a\\x1b[31mred"),
        ("a\u2028b", "a\\u2028b"),
        ("a\u2029b", "a\\u2029b"),
        ("a\x00b", "a\\x00b"),
        ("a\tb", "a\\x09b"),
        ("a\x85b", "a\\x85b"),
        ("a\x7fb", "a\\x7fb"),
    ],
)
def test_clean_escapes_control_characters(raw: str, escaped: str) -> None:
    result = clean(raw)
    assert result == escaped
    assert result.isprintable()
    assert len(result.splitlines()) == 1


def test_clean_output_never_splits_a_line() -> None:
    hostile = "GET / HTTP/1.1\r\nX-Injected: 1\n\x1b]0;title\x07\u2028\u2029\x00\x0b\x0c"
    result = clean(hostile)
    assert result.isprintable()
    assert result.splitlines() == [result]
    assert "X-Injected" in result


def test_clean_caps_length_with_ellipsis() -> None:
    result = clean("x" * 1000, 10)
    assert result == "x" * 10 + "…"
    assert len(clean("y" * (MAX_FIELD + 50))) == MAX_FIELD + 1
    assert clean("y" * (MAX_FIELD + 50)).endswith("…")


def test_clean_exactly_at_limit_is_not_truncated() -> None:
    assert clean("z" * 10, 10) == "z" * 10


def test_clean_caps_the_escaped_text() -> None:
    # the cap holds for what is written: no escape is cut in half
    assert clean("\n" * 100, 9) == "\\x0a" * 2 + "…"
    assert clean("ab\ncd", 4) == "ab…"
    assert clean("ab\ncd", 6) == "ab\\x0a…"
    assert clean("\n" * 3, 12) == "\\x0a" * 3


def test_clean_fast_path_returns_the_same_object() -> None:
    value = "".join(["Mozilla/5.0 ", "(X11; Linux x86_64) ", "ünïcødé ✓"])
    assert clean(value) is value


def test_clean_keeps_printable_unicode() -> None:
    assert clean("café ✓ 日本") == "café ✓ 日本"


def test_clean_optional_and_list() -> None:
    assert clean_optional(None) is None
    assert clean_optional(42) is None
    assert clean_optional("a\nb") == "a\\x0ab"
    assert clean_list("a\nb") == ["a\\x0ab"]
    assert clean_list(["x", 1, "y\r"]) == ["x", "y\\x0d"]
    assert clean_list(frozenset({"b", "a"})) == ["a", "b"]
    assert clean_list(None) == []
    assert len(clean_list([str(i) for i in range(100)])) == MAX_LIST_ITEMS


def test_clean_json_cleans_nested_strings_and_keys() -> None:
    value = {"k\ney": ["v\r", {"deep": "x\x1b"}], "n": 1, "b": True, "none": None}
    assert clean_json(value) == {
        "k\\x0aey": ["v\\x0d", {"deep": "x\\x1b"}],
        "n": 1,
        "b": True,
        "none": None,
    }


def test_clean_json_caps_depth_and_size() -> None:
    deep: object = "bottom"
    for _ in range(10):
        deep = [deep]
    assert clean_json(deep) == [[[["…"]]]]
    assert len(clean_json(list(range(1000)))) == MAX_LIST_ITEMS
    assert clean_json(b"\x00bytes") == "b'\\x00bytes'"


# -- fingerprint() -----------------------------------------------------------


@pytest.mark.parametrize("token", ["a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "x" * 5000])
def test_fingerprint_format_and_value(token: str) -> None:
    value = fingerprint(token)
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", value)
    assert value == "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    assert token not in value


def test_fingerprint_differs_per_token() -> None:
    assert fingerprint("a.b.c") != fingerprint("a.b.d")


# -- rfc3339() ----------------------------------------------------------------

RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1700000000.5, "2023-11-14T22:13:20.500Z"),
        (1700000000.25, "2023-11-14T22:13:20.250Z"),
        (1700000000.125, "2023-11-14T22:13:20.125Z"),
        (951782400.0, "2000-02-29T00:00:00.000Z"),
        (4102444799.999755859375, "2099-12-31T23:59:59.999Z"),
    ],
)
def test_rfc3339_known_values(timestamp: float, expected: str) -> None:
    assert rfc3339(timestamp) == expected


def test_rfc3339_is_utc_and_matches_datetime() -> None:
    for timestamp in (1234567890.0, 1600000000.75, 1700000001.0625, 1700000000.5):
        text = rfc3339(timestamp)
        assert RFC3339_MS.fullmatch(text)
        parsed = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc
        )
        assert abs(parsed.timestamp() - timestamp) < 0.001


def test_rfc3339_after_a_cached_second_changes() -> None:
    assert rfc3339(1700000000.0) == "2023-11-14T22:13:20.000Z"
    assert rfc3339(1700000060.0) == "2023-11-14T22:14:20.000Z"
    assert rfc3339(1700000000.5) == "2023-11-14T22:13:20.500Z"


def test_rfc3339_of_now() -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    text = rfc3339(now.timestamp())
    assert RFC3339_MS.fullmatch(text)
    assert text.startswith(now.strftime("%Y-%m-%dT%H:%M"))


# -- copy_claims() ------------------------------------------------------------


def test_copy_claims_copies_only_named_claims_cleaned() -> None:
    claims = {
        "sub": "alice",
        "email": "alice@example.com\r\nX-Evil: 1",
        "roles": ["admin\n", "user"],
        "password": "hunter2",
    }
    copied = copy_claims(claims, ["email", "roles", "missing"])
    assert copied == {
        "email": "alice@example.com\\x0d\\x0aX-Evil: 1",
        "roles": ["admin\\x0a", "user"],
    }
    assert "password" not in copied
    assert "sub" not in copied


def test_copy_claims_without_claims() -> None:
    assert copy_claims(None, ["email"]) == {}
    assert copy_claims({}, ["email"]) == {}
    assert copy_claims({"email": "x"}, []) == {}


# -- REASONS ----------------------------------------------------------------


def test_reason_table_matches_the_contract() -> None:
    expected = {
        "missing_token": (401, None),
        "unsupported_scheme": (401, None),
        "invalid_request": (400, "invalid_request"),
        "token_too_large": (401, "invalid_token"),
        "malformed_token": (401, "invalid_token"),
        "algorithm_not_allowed": (401, "invalid_token"),
        "unknown_key": (401, "invalid_token"),
        "bad_signature": (401, "invalid_token"),
        "expired": (401, "invalid_token"),
        "not_yet_valid": (401, "invalid_token"),
        "invalid_issuer": (401, "invalid_token"),
        "invalid_audience": (401, "invalid_token"),
        "missing_claim": (401, "invalid_token"),
        "invalid_type": (401, "invalid_token"),
        "revoked": (401, "invalid_token"),
        "insufficient_scope": (403, "insufficient_scope"),
        "key_unavailable": (503, None),
        "locked_out": (429, None),
        "internal_error": (500, None),
    }
    assert {name: (spec.status, spec.error) for name, spec in REASONS.items()} == expected
    for spec in REASONS.values():
        assert spec.description.isprintable()
        assert '"' not in spec.description


# -- identity fields ----------------------------------------------------------

AWKWARD = ["alice", "", "a\nb", "\x1b[31m", "é", "\u2028", "x" * 300, "\x00" * 100, "a b"]


def verified_shaped_claims() -> list[dict[str, object]]:
    """Claims of the shapes the verifier accepts: sub/iss/jti strings or absent, aud strings."""
    cases: list[dict[str, object]] = [{}]
    for text in AWKWARD:
        cases.append({"sub": text, "iss": text, "jti": text})
        cases.append({"sub": text, "aud": text})
        cases.append({"jti": text, "aud": [text, "api"]})
    cases.append({"sub": "a", "aud": [f"aud-{i}\n" for i in range(40)]})
    return cases


@pytest.mark.parametrize("claims", verified_shaped_claims())
@pytest.mark.parametrize(
    ("scopes", "alg", "kid"),
    [
        (frozenset(), "RS256", None),
        (frozenset({"read", "write"}), "EdDSA", "k1"),
        (frozenset({"b\n", "a", "x" * 300}), "A" * 40, "\x1b" * 70),
        (frozenset(f"s{i}" for i in range(40)), "HS256", ""),
    ],
)
def test_verified_identity_is_identity_fields(
    claims: dict[str, object], scopes: frozenset[str], alg: str, kid: str | None
) -> None:
    aud = claims.get("aud")
    audience = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
    fast = verified_identity(
        claims.get("sub"),  # type: ignore[arg-type]
        claims.get("iss"),  # type: ignore[arg-type]
        claims.get("jti"),  # type: ignore[arg-type]
        audience,
        scope_fields(scopes),
        alg,
        kid,
    )
    assert fast == identity_fields(claims, scopes, alg, kid)
    assert list(fast) == list(identity_fields(claims, scopes, alg, kid))


def test_identity_fields_of_unverified_shapes() -> None:
    """Denials carry claims that failed their checks: anything that is not a string is dropped."""
    claims = {"sub": 5, "iss": None, "jti": ["x"], "aud": [1, "a\n", None]}
    assert identity_fields(claims, ["b", "a", "a"], None, None) == {
        "subject": None,
        "issuer": None,
        "token_id": None,
        "audience": ["a\\x0a"],
        "scopes": ["a", "b"],
        "alg": None,
        "kid": None,
    }


def test_scope_fields_are_distinct_sorted_capped_and_clean() -> None:
    assert scope_fields(["b", "a", "b"]) == ["a", "b"]
    assert scope_fields(frozenset({"x\n"})) == ["x\\x0a"]
    assert scope_fields([]) == []
    assert len(scope_fields(f"s{i:03}" for i in range(100))) == MAX_LIST_ITEMS
