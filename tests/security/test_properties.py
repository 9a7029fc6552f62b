"""Property-based: any ``Authorization`` header, any token bytes, through both middlewares.

Whatever a client sends (raw bytes, text, a ``Bearer`` scheme with any token,
compact JWS made of arbitrary JSON, a real token with one edit, several
headers), each middleware answers 400, 401 or 403, emits exactly one event,
raises nothing, takes well under a second, logs one parseable line per record
(no raw control character from the token's header), and shows the token in no output.
500 examples per middleware; derandomized in CI (``CI=true``) so a run there
is reproducible, and without an example database (no ``.hypothesis/`` folder).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from attack_kit import (
    MAX_SECONDS,
    Channel,
    Header,
    assert_no_leak,
    assert_one_line_each,
    b64,
    claims,
    signed,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jwt_audit_middleware import REASONS
from jwt_audit_middleware.testing import SigningKey, jwks_document

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
NEAR_B64 = B64URL + ".=+/ \t\r\n\x00%,;é"

PROPERTY_SETTINGS = settings(
    max_examples=500,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Edit:
    """One edit of a valid token, made inside the test (the token needs the run's key)."""

    position: float
    op: str
    char: str

    def apply(self, token: str) -> str:
        index = min(int(self.position * len(token)), len(token) - 1)
        if self.op == "replace":
            return token[:index] + self.char + token[index + 1 :]
        if self.op == "insert":
            return token[:index] + self.char + token[index:]
        if self.op == "delete":
            return token[:index] + token[index + 1 :]
        if self.op == "truncate":
            return token[:index]
        head, payload, signature = token.split(".")  # "swap": segments reordered
        return f"{payload}.{head}.{signature}"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
headers_json = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "RS256", "RS256", "HS256", "ES256", "none", "NONE", ""])},
    optional={
        "kid": st.sampled_from(["rs256-1", "../../etc/passwd", "' OR 1=1--"]) | st.text(),
        "typ": st.sampled_from(["JWT", "at+jwt"]) | st.text(max_size=8),
        "crit": st.lists(st.text(max_size=8), max_size=2),
        "jku": st.just("http://127.0.0.1:9/jwks"),
        "x": json_values,
    },
)
payloads_json = st.fixed_dictionaries(
    {},
    optional={
        "sub": json_values,
        "exp": json_values,
        "iat": json_values,
        "aud": json_values,
        "iss": json_values,
    },
)


def _segment(value: Any) -> str:
    return b64(json.dumps(value))


segments = st.one_of(
    st.text(alphabet=B64URL, max_size=48),
    st.binary(max_size=96).map(b64),
    json_values.map(_segment),
)
edits = st.builds(
    Edit,
    st.floats(min_value=0, max_value=1, exclude_max=True),
    st.sampled_from(["replace", "insert", "delete", "truncate", "swap"]),
    st.sampled_from([*B64URL, ".", "=", " ", "\x00", "é", "\r\n"]),
)
#: three segments: JSON header and payload, any signature text
structured = st.tuples(headers_json.map(_segment), payloads_json.map(_segment), segments).map(
    ".".join
)
tokens: st.SearchStrategy[str | Edit] = st.one_of(
    st.lists(segments, min_size=1, max_size=6).map(".".join),
    structured,
    st.text(alphabet=NEAR_B64, max_size=200),
    st.binary(max_size=300).map(lambda raw: raw.decode("latin-1")),
    edits,
    edits.filter(lambda edit: edit.char in B64URL),  # stays base64url: reaches the signature
    structured,
)
schemes = st.sampled_from(
    [b"Bearer ", b"bearer ", b"BEARER  ", b"Bearer", b"Bearer\t", b" Bearer ", b"Basic ", b""]
)
#: one Authorization value: raw bytes, any text, or a scheme and a token (text or bytes)
values: st.SearchStrategy[bytes | tuple[bytes, str | Edit]] = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=120).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.tuples(schemes, tokens),
    st.tuples(st.just(b"Bearer "), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))),
)
#: Authorization values whose outputs make up the text every output shares
REFERENCE_VALUES = [
    None,
    b"",
    b"Basic x",
    b"Bearer",
    b"Bearer a",
    b"Bearer a.b.c",
    b"Bearer " * 2000,
]

#: mostly one header (several are refused at once), sometimes none or several
authorization_lists = st.one_of(values.map(lambda value: [value]), st.lists(values, max_size=3))


@pytest.fixture(scope="module")
def rsa(keys: dict[str, SigningKey]) -> SigningKey:
    return keys["RS256"]


@pytest.fixture(scope="module")
def valid(rsa: SigningKey) -> str:
    """A token the target allows: every edit of it must be refused."""
    payload = claims(iss="https://idp.example", aud="api", scope="read")
    return signed(rsa, {"alg": "RS256", "kid": "rs256-1"}, payload)


@pytest.fixture(scope="module", params=["asgi", "wsgi"])
def target(
    request: pytest.FixtureRequest, rsa: SigningKey
) -> Iterator[tuple[Channel, Any, dict[str, Any]]]:
    """One middleware per flavour for all its examples (building it is not the subject)."""
    channel = Channel(request.param)
    options = {
        "algorithms": ["RS256"],
        "jwks": jwks_document(rsa),
        "issuer": "https://idp.example",
        "audience": "api",
        "path_scopes": {"/api": ["read"]},
    }
    middleware = channel.build(options)
    yield channel, middleware, options
    middleware.close()


@pytest.fixture(scope="module")
def known(target: tuple[Channel, Any, dict[str, Any]]) -> str:
    """What the outputs say whatever the token: no leak when an input happens to match it."""
    channel, middleware, options = target
    texts = [f"{code} {spec.description}" for code, spec in REASONS.items()]
    for value in REFERENCE_VALUES:
        headers = [("Authorization", value)] if value is not None else []
        texts += channel.send(options, headers, middleware=middleware).texts()
    return "\n".join(texts)


def _materialise(
    drawn: list[bytes | tuple[bytes, str | Edit]], valid: str
) -> tuple[list[Header], list[str]]:
    """The header list, and the secrets: each value's text and its token part."""
    headers: list[Header] = []
    secrets: list[str] = []
    for value in drawn:
        if isinstance(value, bytes):
            raw = value
            secrets.append(raw.decode("latin-1").strip())
        else:
            scheme, token = value
            if isinstance(token, Edit):
                token = token.apply(valid)
                # spaces around a token are no edit: "Bearer  <valid>" is the valid token
                assume(token.strip(" \t") != valid)
            raw = scheme + token.encode("latin-1", "replace")
            secrets.append(token)
        headers.append(("Authorization", raw))
        text = raw.decode("latin-1")
        if " " in text.strip():
            secrets.append(text.strip().split(" ", 1)[1].strip(" "))
    return headers, secrets


@PROPERTY_SETTINGS
@given(drawn=authorization_lists)
def test_any_authorization_is_answered_with_one_denial(
    target: tuple[Channel, Any, dict[str, Any]], valid: str, known: str, drawn: Any
) -> None:
    channel, middleware, options = target
    headers, secrets = _materialise(drawn, valid)
    outcome = channel.send(options, headers, middleware=middleware)
    assert outcome.status in {400, 401, 403}
    event = outcome.event  # exactly one event, and no other record
    assert event["event"] == "denial"
    assert event["status"] == outcome.status
    assert outcome.seconds < MAX_SECONDS
    assert_one_line_each(outcome)
    assert_no_leak(outcome, *secrets, known=known)


@PROPERTY_SETTINGS
@given(token=tokens, scheme=schemes)
def test_any_token_bytes_after_a_scheme(
    target: tuple[Channel, Any, dict[str, Any]],
    valid: str,
    known: str,
    token: str | Edit,
    scheme: bytes,
) -> None:
    """The same property, every example a single ``Authorization`` value built from a token."""
    channel, middleware, options = target
    headers, secrets = _materialise([(scheme, token)], valid)
    outcome = channel.send(options, headers, middleware=middleware)
    assert outcome.status in {400, 401, 403}
    assert outcome.event["reason"] is not None
    assert outcome.seconds < MAX_SECONDS
    assert_one_line_each(outcome)
    assert_no_leak(outcome, *secrets, known=known)


def test_the_valid_token_is_allowed(
    target: tuple[Channel, Any, dict[str, Any]], valid: str
) -> None:
    """Else the edits above would prove nothing."""
    channel, middleware, options = target
    outcome = channel.send(
        options, [("Authorization", f"Bearer {valid}".encode())], middleware=middleware
    )
    assert (outcome.status, outcome.event["reason"]) == (200, None)
