"""RequestReader (client address, request id, cleaning) and get_claims()."""

from __future__ import annotations

import itertools
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest

from jwt_audit_middleware import Settings, get_claims
from jwt_audit_middleware.events import _RequestIds
from jwt_audit_middleware.request import SCOPE_KEY, RequestReader
from jwt_audit_middleware.verifier import VerifiedToken

SECRET = b"r" * 32
HEX32 = re.compile(r"[0-9a-f]{32}")


def reader(*trusted: str, **options: Any) -> RequestReader:
    return RequestReader(
        Settings(algorithms=["HS256"], secret=SECRET, trusted_proxies=list(trusted), **options)
    )


def read(r: RequestReader, **changes: Any) -> Any:
    values: dict[str, Any] = {
        "method": "GET",
        "path": "/orders",
        "protocol": "http",
        "peer": "203.0.113.9",
        "user_agent": "curl/8.0",
        "request_id": None,
        "started": time.perf_counter(),
    }
    values.update(changes)
    return r.info(**values)


# -- client_ip -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded", "xff"),
    [
        (None, "198.51.100.1"),
        ("for=198.51.100.1", None),
        ("for=198.51.100.1", "198.51.100.2"),
    ],
)
def test_forwarding_headers_ignored_without_trusted_proxies(
    forwarded: str | None, xff: str | None
) -> None:
    r = reader()
    assert r.reads_forwarding is False
    assert r.client_ip("10.0.0.1", forwarded, xff) == "10.0.0.1"


def test_forwarding_headers_ignored_from_an_untrusted_peer() -> None:
    r = reader("10.0.0.0/8")
    assert r.reads_forwarding is True
    assert r.client_ip("203.0.113.9", None, "198.51.100.1") == "203.0.113.9"
    assert r.client_ip("203.0.113.9", "for=198.51.100.1", None) == "203.0.113.9"


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("198.51.100.1", "198.51.100.1"),
        ("198.51.100.1, 10.0.0.2", "198.51.100.1"),
        ("6.6.6.6, 198.51.100.1, 10.0.0.2, 10.0.0.3", "198.51.100.1"),
        ("198.51.100.1:5678", "198.51.100.1"),
        ("2001:db8::7, 10.0.0.2", "2001:db8::7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("10.0.0.3, 10.0.0.2", "10.0.0.3"),
        ("198.51.100.1, garbage, 10.0.0.2", "10.0.0.2"),
        ("198.51.100.1, unknown", "10.0.0.1"),
        ("", "10.0.0.1"),
    ],
)
def test_x_forwarded_for_walks_right_to_left(xff: str, expected: str) -> None:
    assert reader("10.0.0.0/8").client_ip("10.0.0.1", None, xff) == expected


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        ('for="[2001:db8::1]:4711"', "2001:db8::1"),
        ('for="[2001:db8::1]:4711", for=10.0.0.2', "2001:db8::1"),
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ("For=192.0.2.60, for=198.51.100.17;proto=https", "198.51.100.17"),
        ('for="192.0.2.43:47011"', "192.0.2.43"),
        ("for=_hidden, for=10.0.0.2", "10.0.0.2"),
        ("for=unknown", "10.0.0.1"),
        ("proto=https", "10.0.0.1"),
    ],
)
def test_forwarded_header(forwarded: str, expected: str) -> None:
    assert reader("10.0.0.0/8").client_ip("10.0.0.1", forwarded, None) == expected


def test_x_forwarded_for_takes_precedence_over_a_client_sent_forwarded() -> None:
    # nginx appends the real client to X-Forwarded-For and passes the client's own
    # Forwarded header through: believing Forwarded would let the client pick its IP
    r = reader("10.0.0.0/8")
    assert r.client_ip("10.0.0.1", "for=198.51.100.66", "203.0.113.5") == "203.0.113.5"
    assert r.client_ip("10.0.0.1", "for=192.0.2.60", None) == "192.0.2.60"


def test_ipv6_trusted_proxy() -> None:
    r = reader("::1/128", "fd00::/8")
    assert r.client_ip("::1", None, "198.51.100.1, fd00::2") == "198.51.100.1"
    assert r.client_ip("::2", None, "198.51.100.1") == "::2"


def test_peer_edge_cases() -> None:
    r = reader("10.0.0.0/8")
    assert r.client_ip(None, None, "198.51.100.1") == "unknown"
    assert r.client_ip("not-an-ip", None, "198.51.100.1") == "not-an-ip"
    assert r.client_ip("evil\r\nhost", None, None) == "evil\\x0d\\x0ahost"


def test_client_ip_in_request_info() -> None:
    r = reader("10.0.0.0/8")
    assert read(r, peer="10.0.0.1", x_forwarded_for="198.51.100.1").client_ip == "198.51.100.1"
    assert read(r, peer="10.0.0.1", forwarded="for=192.0.2.1").client_ip == "192.0.2.1"
    assert read(reader(), peer="10.0.0.1", x_forwarded_for="1.2.3.4").client_ip == "10.0.0.1"


# -- request ids ---------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id",
    ["abc-123", "0af7651916cd43dd8448eb211c80319c", "req:1@edge/+=.", "x" * 128],
)
def test_sane_request_id_is_kept(request_id: str) -> None:
    assert read(reader(), request_id=request_id).request_id == request_id


@pytest.mark.parametrize(
    "request_id",
    [None, "", "x" * 129, "has space", "line\nbreak", "cr\rlf", 'quote"d', "ünïcode", "a;b"],
)
def test_insane_request_id_is_replaced(request_id: str | None) -> None:
    generated = read(reader(), request_id=request_id).request_id
    assert HEX32.fullmatch(generated)
    assert generated != request_id


def test_generated_request_ids_are_unique() -> None:
    r = reader()
    ids = {read(r).request_id for _ in range(50)}
    assert len(ids) == 50


def test_generated_request_ids_count_in_hex_and_renew_the_prefix_when_the_counter_ends() -> None:
    ids = _RequestIds()
    first, second = ids(), ids()
    assert first[:24] == second[:24]
    assert (first[24:], second[24:]) == ("00000001", "00000002")
    ids.counter = itertools.count(2**33 - 2)  # the last two ids of this prefix
    prefix = ids.prefix
    assert ids() == prefix + "fffffffe"
    assert ids() == prefix + "ffffffff"
    renewed = ids()
    assert renewed[:24] != prefix
    assert renewed[24:] == "00000001"
    assert HEX32.fullmatch(renewed)


def test_request_id_header_is_normalised() -> None:
    assert reader(request_id_header="X-Correlation-ID").request_id_header == "x-correlation-id"
    assert reader(request_id_header=None).request_id_header is None


# -- cleaning of the other fields -------------------------------------------------


def test_method_path_and_user_agent_are_cleaned() -> None:
    result = read(
        reader(),
        method="GET\r\nX",
        path="/a\nb",
        user_agent="Mozilla\x1b[31m" + "x" * 1000,
        protocol="websocket",
    )
    assert result.method == "GET\\x0d\\x0aX"
    assert result.path == "/a\\x0ab"
    assert result.user_agent is not None
    assert result.user_agent.startswith("Mozilla\\x1b[31m")
    assert result.user_agent.endswith("…")
    assert len(result.user_agent) < 300
    assert result.protocol == "websocket"
    assert read(reader(), user_agent=None).user_agent is None


# -- get_claims ----------------------------------------------------------------


@pytest.fixture
def token() -> VerifiedToken:
    return VerifiedToken(
        claims={"sub": "alice", "scope": "read"},
        header={"alg": "HS256"},
        fingerprint="sha256:0123456789abcdef",
        subject="alice",
    )


def test_get_claims_on_scope_and_environ(token: VerifiedToken) -> None:
    scope = {"type": "http", SCOPE_KEY: token}
    environ = {"REQUEST_METHOD": "GET", "jwt_audit": token}
    assert get_claims(scope) == {"sub": "alice", "scope": "read"}
    assert get_claims(environ) is token.claims
    assert get_claims({"type": "http"}) is None


def test_get_claims_on_request_objects(token: VerifiedToken) -> None:
    starlette_like = SimpleNamespace(scope={"type": "http", "jwt_audit": token})
    flask_like = SimpleNamespace(environ={"jwt_audit": token})
    django_like = SimpleNamespace(jwt_audit=token, META={})
    django_meta = SimpleNamespace(META={"jwt_audit": token})
    for request in (starlette_like, flask_like, django_like, django_meta):
        assert get_claims(request) is token.claims


def test_get_claims_on_a_starlette_request(token: VerifiedToken) -> None:
    from starlette.requests import Request

    request = Request(
        {"type": "http", "method": "GET", "path": "/", "headers": [], SCOPE_KEY: token}
    )
    assert get_claims(request) is token.claims


@pytest.mark.parametrize(
    "obj",
    [
        None,
        object(),
        {"jwt_audit": {"sub": "forged"}},
        {"jwt_audit": "sub=forged"},
        SimpleNamespace(scope={"jwt_audit": {"sub": "forged"}}),
        SimpleNamespace(environ={}),
        SimpleNamespace(jwt_audit={"sub": "forged"}),
    ],
)
def test_get_claims_returns_none_without_a_verified_token(obj: object) -> None:
    assert get_claims(obj) is None


def test_ipv4_mapped_peer_matches_an_ipv4_trusted_proxy() -> None:
    r = reader("10.0.0.0/8")
    assert r.client_ip("::ffff:10.0.0.1", None, "198.51.100.1") == "198.51.100.1"
    assert r.client_ip("10.0.0.1", None, "198.51.100.1, ::ffff:10.0.0.2") == "198.51.100.1"


def test_deny_request_detail_is_cleaned_and_capped() -> None:
    from jwt_audit_middleware.request import LATE_DENIAL_KEY, deny_request

    scope: dict[str, object] = {}
    assert deny_request(scope, "revoked", detail="x\r\ny" * 2000) is True
    denied = scope[LATE_DENIAL_KEY]
    assert "\r" not in denied.detail  # type: ignore[attr-defined]
    assert "\n" not in denied.detail  # type: ignore[attr-defined]
    assert len(denied.detail) <= 257  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown reason"):
        deny_request(scope, "because")


def test_forwarding_hops_read_are_capped() -> None:
    # found in review: 90 headers x 800 hops from a trusted peer cost 364 ms a request
    reader = RequestReader(
        Settings(algorithms=["HS256"], secret="s" * 32, trusted_proxies=["10.0.0.0/8"])
    )
    flood = ",".join(["10.0.0.1"] * 72_000)  # all trusted: the walk would read every one
    started = time.perf_counter()
    client = reader.client_ip("10.0.0.2", None, f"203.0.113.9,{flood}")
    forwarded = reader.client_ip("10.0.0.2", ";".join(["for=10.0.0.1"] * 72_000), None)
    assert time.perf_counter() - started < 0.05
    assert client == forwarded == "10.0.0.1"  # the last hop read, not the spoofable far end
    assert reader.client_ip("10.0.0.2", None, "203.0.113.9, 10.0.0.7") == "203.0.113.9"
