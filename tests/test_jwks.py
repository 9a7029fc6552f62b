"""``jwks_url``: keys fetched from a real HTTP server on 127.0.0.1, under faults."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import pickle
import secrets
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import jwks_threads
from jwks_server import JWKSServer

from jwt_audit_middleware import (
    ConfigurationError,
    JWTAuditMiddleware,
    JWTAuditWSGIMiddleware,
    Settings,
    jwks,
    urls,
)
from jwt_audit_middleware.jwks import FetchError, RemoteKeySet, fetch
from jwt_audit_middleware.testing import CapturedEvents, SigningKey, asgi_request, jwks_document
from jwt_audit_middleware.urls import check_url, is_loopback, safe_location

pytestmark = pytest.mark.usefixtures("no_leaked_jwks_threads")


@pytest.fixture(scope="module")
def new_key() -> SigningKey:
    """The key an identity provider rotates to."""
    return SigningKey.generate("RS256", kid="rs256-2")


@pytest.fixture(scope="module")
def stranger() -> SigningKey:
    """A key nobody publishes."""
    return SigningKey.generate("ES256", kid="stranger")


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Middlewares built by a test: their refresh threads are stopped afterwards."""
    built: list[Any] = []
    yield built
    for middleware in built:
        middleware._gate.close()


def options(server: JWKSServer, **extra: Any) -> dict[str, Any]:
    return {
        "algorithms": ["RS256", "ES256"],
        "jwks_url": server.url,
        "jwks_timeout": 0.5,
        "jwks_min_refresh_seconds": 0.0,
        **extra,
    }


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def asgi(closing: list[Any], server: JWKSServer, **extra: Any) -> JWTAuditMiddleware:
    middleware = JWTAuditMiddleware(ok_app, **options(server, **extra))
    closing.append(middleware)
    return middleware


async def call(app: Any, token: str | None) -> int:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = await asgi_request(app, "/r", headers=headers)
    assert response.status is not None
    return response.status


def key_events(events: CapturedEvents, outcome: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["event"] == "key_event" and (outcome is None or e["outcome"] == outcome)
    ]


def wait_until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- start-up, rotation, refresh ------------------------------------------------


def test_keys_are_fetched_at_start_up(
    closing: list[Any], server: JWKSServer, rsa_key: SigningKey, events: CapturedEvents
) -> None:
    middleware = asgi(closing, server)
    assert server.hits == 1  # before any request
    assert asyncio.run(call(middleware, rsa_key.token())) == 200
    assert server.hits == 1
    added = key_events(events, "key_added")
    assert [e["kid"] for e in added] == ["rs256-1"]
    event = added[0]
    assert event["schema"] == "jwt-audit/1"
    assert event["reason"] is None
    assert server.url.split("/jwks")[0] in event["detail"]
    assert rsa_key.jwk()["n"][:40] not in events.text()  # no key material in any line


@pytest.mark.anyio
async def test_a_rotated_key_verifies_on_its_first_request(
    closing: list[Any],
    server: JWKSServer,
    rsa_key: SigningKey,
    new_key: SigningKey,
    events: CapturedEvents,
) -> None:
    middleware = asgi(closing, server, jwks_min_refresh_seconds=30)
    middleware._gate.verifier.remote_key_sets[0].wait_first_fetch(2)
    assert await call(middleware, rsa_key.token()) == 200
    server.set("ok", jwks_document(rsa_key, new_key))  # the IdP publishes and signs at once
    assert await call(middleware, new_key.token()) == 200
    assert server.hits == 2
    assert [e["kid"] for e in key_events(events, "key_added")] == ["rs256-1", "rs256-2"]
    assert await call(middleware, rsa_key.token()) == 200  # the old key still published


def test_a_rotated_key_verifies_under_wsgi(
    server: JWKSServer, rsa_key: SigningKey, new_key: SigningKey
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    middleware = JWTAuditWSGIMiddleware(app, **options(server))
    try:
        server.set("ok", jwks_document(new_key))
        statuses: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/r",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {new_key.token()}",
        }
        middleware(environ, lambda status, headers, exc=None: statuses.append(status))
        assert statuses == ["200 OK"]
        assert server.hits == 2
    finally:
        middleware._gate.close()


def test_background_refresh_retires_keys_before_the_cache_expires(
    closing: list[Any],
    server: JWKSServer,
    rsa_key: SigningKey,
    new_key: SigningKey,
    events: CapturedEvents,
) -> None:
    middleware = asgi(closing, server, jwks_cache_seconds=0.2, jwks_min_refresh_seconds=30)
    assert asyncio.run(call(middleware, rsa_key.token())) == 200
    server.set("ok", jwks_document(new_key))  # rs256-1 retired, no request needed
    wait_until(lambda: key_events(events, "key_retired"))
    assert key_events(events, "key_retired")[0]["kid"] == "rs256-1"
    # a token of the retired key is refused, and its cached verdict is gone with the ring
    assert asyncio.run(call(middleware, rsa_key.token())) == 401
    assert asyncio.run(call(middleware, new_key.token())) == 200


def test_an_unchanged_document_keeps_the_ring(closing: list[Any], server: JWKSServer) -> None:
    middleware = asgi(closing, server, jwks_cache_seconds=0.1)
    remote = middleware._gate.verifier.remote_key_sets[0]
    ring, version = remote.ring, remote.version
    server.wait_for_hits(3)
    assert remote.ring is ring
    assert remote.version == version


# -- single flight, rate limit, negative cache ------------------------------------


@pytest.mark.anyio
async def test_a_storm_of_unknown_kids_makes_at_most_one_refetch(
    closing: list[Any], server: JWKSServer, stranger: SigningKey, rsa_key: SigningKey
) -> None:
    middleware = asgi(closing, server, jwks_min_refresh_seconds=30)
    remote = middleware._gate.verifier.remote_key_sets[0]
    remote.wait_first_fetch(2)
    assert server.hits == 1
    server.delay = 0.2  # the refetch takes a while: many requests wait on it
    tokens = [stranger.token(headers={"kid": secrets.token_hex(8)}, iss="x") for _ in range(1000)]
    statuses = await asyncio.gather(*(call(middleware, token) for token in tokens))
    assert set(statuses) == {401}
    assert server.hits <= 2
    assert await call(middleware, rsa_key.token()) == 200


def test_unknown_kids_are_rate_limited_even_after_a_failed_fetch(
    closing: list[Any], server: JWKSServer, stranger: SigningKey, rsa_key: SigningKey
) -> None:
    middleware = asgi(closing, server, jwks_min_refresh_seconds=30)
    server.set("500")
    for _ in range(20):
        assert asyncio.run(call(middleware, stranger.token())) == 401
    assert server.hits == 2  # start-up, then one failed refetch: the interval holds after it
    assert asyncio.run(call(middleware, rsa_key.token())) == 200


def test_negative_cache_answers_a_known_unknown_kid_without_waiting(
    closing: list[Any], server: JWKSServer, stranger: SigningKey
) -> None:
    middleware = asgi(closing, server, jwks_min_refresh_seconds=0.3)
    remote = middleware._gate.verifier.remote_key_sets[0]
    assert remote.may_refresh("stranger")  # a successful start-up fetch is no kid refetch
    assert asyncio.run(call(middleware, stranger.token())) == 401
    assert server.hits == 2
    assert not remote.may_refresh("stranger")  # remembered as unknown
    time.sleep(0.35)
    assert remote.may_refresh("stranger")


# -- faults ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_hanging_fetch_does_not_delay_requests_with_cached_keys(
    closing: list[Any],
    server: JWKSServer,
    rsa_key: SigningKey,
    stranger: SigningKey,
    events: CapturedEvents,
) -> None:
    middleware = asgi(closing, server, jwks_timeout=1.0)
    middleware._gate.verifier.remote_key_sets[0].wait_first_fetch(2)
    server.set("hang")
    started = time.perf_counter()
    waiting = asyncio.ensure_future(call(middleware, stranger.token()))  # triggers the fetch
    await asyncio.sleep(0.05)
    assert server.hits == 2
    for _ in range(20):
        begun = time.perf_counter()
        assert await call(middleware, rsa_key.token()) == 200
        assert time.perf_counter() - begun < 0.05
    assert not waiting.done()
    assert await waiting == 401
    elapsed = time.perf_counter() - started
    assert 0.9 < elapsed < 2.0  # the deadline ended the fetch
    failed = key_events(events, "fetch_failed")
    assert [e["reason"] for e in failed] == ["timeout"]
    assert key_events(events, "serving_stale")


def test_an_outage_after_a_good_fetch_keeps_valid_tokens_passing(
    closing: list[Any], server: JWKSServer, rsa_key: SigningKey, events: CapturedEvents
) -> None:
    middleware = asgi(closing, server, jwks_cache_seconds=0.1, cache_size=0)
    server.set("500")
    wait_until(lambda: key_events(events, "serving_stale"))
    for _ in range(3):
        assert asyncio.run(call(middleware, rsa_key.token())) == 200
    stale = key_events(events, "serving_stale")[0]
    assert stale["reason"] == "http_status"
    failed = key_events(events, "fetch_failed")[0]
    assert "HTTP 500" in failed["detail"]


def test_an_outage_before_any_fetch_is_503_until_keys_arrive(
    closing: list[Any], server: JWKSServer, rsa_key: SigningKey, events: CapturedEvents
) -> None:
    server.set("500")
    middleware = asgi(closing, server, jwks_min_refresh_seconds=0.2, jwks_cache_seconds=60)
    token = rsa_key.token()
    assert asyncio.run(call(middleware, token)) == 503
    denial = next(e for e in events if e["event"] == "denial")
    assert (denial["reason"], denial["status"]) == ("key_unavailable", 503)
    server.set("ok")
    time.sleep(0.25)
    assert asyncio.run(call(middleware, token)) == 200  # the request's refetch found keys


HOSTILE = {
    "500": "http_status",
    "html": "invalid_document",
    "hang": "timeout",
    "drip": "timeout",
    "huge": "too_large",
    "nested": "invalid_document",
    "redirect": "redirect",
    "wrong_types": "invalid_document",
    "private_key": "invalid_document",
    "too_many_keys": "too_many_keys",
    "not_utf8": "invalid_document",
}


@pytest.mark.parametrize(("mode", "code"), HOSTILE.items())
def test_every_hostile_document_is_a_failed_fetch_never_a_500(
    closing: list[Any],
    server: JWKSServer,
    rsa_key: SigningKey,
    events: CapturedEvents,
    mode: str,
    code: str,
) -> None:
    server.set(mode)
    started = time.monotonic()
    middleware = asgi(closing, server, jwks_timeout=0.3, jwks_min_refresh_seconds=30)
    assert time.monotonic() - started < 1.0  # the deadline bounds even a drip
    assert asyncio.run(call(middleware, rsa_key.token())) == 503
    failed = key_events(events, "fetch_failed")
    assert [e["reason"] for e in failed] == [code]
    assert not key_events(events, "key_added")
    assert server.paths == ["/jwks"]  # a redirect is not followed
    assert not [e for e in events if e.get("reason") == "internal_error"]


def test_fetch_refuses_plain_http_to_other_hosts() -> None:
    with pytest.raises(FetchError) as raised:
        fetch("http://example.com/jwks", timeout=0.1)
    assert raised.value.code == "bad_url"
    assert "https" in raised.value.detail


@pytest.mark.parametrize(
    "url",
    ["https://idp.example.com/.well-known/jwks.json", "http://127.0.0.1:8080/j", "http://[::1]/j"],
)
def test_accepted_urls(url: str) -> None:
    assert check_url(url) is None
    assert Settings(algorithms=["RS256"], jwks_url=url, jwks_timeout=0.01).jwks_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://idp.example.com/jwks", "loopback"),
        ("ftp://127.0.0.1/jwks", "https"),
        ("https://user:pw@idp.example.com/jwks", "credentials"),
        ("https:///jwks", "https"),
        ("https://idp.example.com:99999/", "valid URL"),
    ],
)
def test_refused_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^jwks_url: .*{message}"):
        Settings(algorithms=["RS256"], jwks_url=url)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.2", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_safe_location_drops_the_query_and_credentials_stay_out_of_messages() -> None:
    assert safe_location("https://idp.example.com/jwks?tenant=t&sig=abc") == (
        "https://idp.example.com/jwks"
    )
    assert safe_location("https://idp.example.com:8443") == "https://idp.example.com:8443/"
    assert len(safe_location("https://idp.example.com/" + "a" * 500)) == 200


def test_url_checks_are_a_leaf_and_still_importable_from_jwks() -> None:
    assert (jwks.check_url, jwks.is_loopback, jwks.safe_location) == (
        urls.check_url,
        urls.is_loopback,
        urls.safe_location,
    )
    source = Path(urls.__file__).read_text(encoding="utf-8")
    assert "from ." not in source  # the standard library only


def test_jwks_url_configuration_errors(rsa_key: SigningKey) -> None:
    url = "https://idp.example.com/jwks"
    with pytest.raises(ConfigurationError, match=r"^jwks_url: HS256 needs a shared secret"):
        Settings(algorithms=["RS256", "HS256"], jwks_url=url)
    with pytest.raises(ConfigurationError, match=r"^jwks_url: give either jwks_url or public_key"):
        Settings(algorithms=["RS256"], jwks_url=url, public_key=rsa_key.public_pem)
    with pytest.raises(ConfigurationError, match=r"^jwks_timeout: "):
        Settings(algorithms=["RS256"], jwks_url=url, jwks_timeout=0)
    with pytest.raises(ConfigurationError, match=r"^jwks_min_refresh_seconds: "):
        Settings(algorithms=["RS256"], jwks_url=url, jwks_min_refresh_seconds=-1)
    # no static key is needed for the algorithms: they come from the URL
    assert len(Settings(algorithms=["RS256", "ES256"], jwks_url=url).keyring) == 0


def test_jwks_settings_from_env_and_pickle() -> None:
    settings = Settings.from_env(
        {
            "JWT_AUDIT_ALGORITHMS": "RS256",
            "JWT_AUDIT_JWKS_URL": "https://idp.example.com/jwks",
            "JWT_AUDIT_JWKS_TIMEOUT": "2.5",
            "JWT_AUDIT_JWKS_CACHE_SECONDS": "600",
            "JWT_AUDIT_JWKS_MIN_REFRESH_SECONDS": "10",
        }
    )
    assert (settings.jwks_timeout, settings.jwks_cache_seconds) == (2.5, 600.0)
    assert settings.jwks_min_refresh_seconds == 10.0
    copy = pickle.loads(pickle.dumps(settings))
    assert copy.jwks_url == settings.jwks_url
    assert copy.jwks_timeout == 2.5
    assert not jwks_threads()  # Settings starts no thread


# -- lifecycle ---------------------------------------------------------------------------


def test_close_stops_the_thread_and_keys_keep_serving(
    server: JWKSServer, rsa_key: SigningKey
) -> None:
    middleware = JWTAuditMiddleware(ok_app, **options(server))
    assert jwks_threads()
    middleware._gate.close()
    assert not jwks_threads()
    assert asyncio.run(call(middleware, rsa_key.token())) == 200


def test_an_abandoned_key_set_stops_its_thread(server: JWKSServer) -> None:
    remote = RemoteKeySet(server.url, ["RS256"], timeout=0.5, cache_seconds=300)
    assert remote.ring is not None
    assert len(jwks_threads()) == 1
    del remote
    gc.collect()
    wait_until(lambda: not jwks_threads())


@pytest.mark.anyio
async def test_construction_on_an_event_loop_does_not_wait_for_the_fetch(
    closing: list[Any], server: JWKSServer, rsa_key: SigningKey
) -> None:
    server.delay = 0.3
    started = time.perf_counter()
    middleware = asgi(closing, server)
    assert time.perf_counter() - started < 0.2
    # the first request shares the fetch in flight (in a worker thread)
    assert await call(middleware, rsa_key.token()) == 200
    assert server.hits == 1


def test_a_broken_event_handler_does_not_stop_rotation(
    server: JWKSServer, rsa_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: dict[str, Any], level: int) -> None:
        raise RuntimeError("handler down")

    remote = RemoteKeySet(server.url, ["RS256"], timeout=0.5, emit=broken)
    try:
        assert remote.ring is not None
        assert "cannot emit a key event" in caplog.text
    finally:
        remote.close()


@pytest.mark.anyio
async def test_concurrent_requests_for_a_new_key_share_one_fetch(
    closing: list[Any], server: JWKSServer, rsa_key: SigningKey, new_key: SigningKey
) -> None:
    # no rate limit at all: only single flight keeps this to one fetch
    middleware = asgi(closing, server, jwks_min_refresh_seconds=0)
    middleware._gate.verifier.remote_key_sets[0].wait_first_fetch(2)
    server.delay = 0.2
    server.set("ok", jwks_document(rsa_key, new_key))
    tokens = [new_key.token() for _ in range(200)]
    statuses = await asyncio.gather(*(call(middleware, token) for token in tokens))
    assert set(statuses) == {200}
    assert server.hits == 2


@pytest.mark.anyio
async def test_lifespan_shutdown_and_close_stop_the_refresh_thread(server: JWKSServer) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    middleware = JWTAuditMiddleware(app, **options(server))
    assert jwks_threads()
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    wait_until(lambda: not jwks_threads())

    wsgi = JWTAuditWSGIMiddleware(lambda environ, start: [], **options(server))
    assert jwks_threads()
    wsgi.close()
    wait_until(lambda: not jwks_threads())


# -- outages: back off, keep serving ------------------------------------------------------


class SimulatedIdP:
    """Stands in for ``jwks.fetch`` on a simulated clock: hours of outage, no sleeping."""

    def __init__(self, document: dict[str, Any], *, up: bool = True) -> None:
        self.now = 1000.0
        self.up = up
        self.body = json.dumps(document).encode()
        self.fetches: list[float] = []

    def clock(self) -> float:
        return self.now

    def fetch(self, url: str, *, timeout: float, max_bytes: int) -> bytes:
        self.fetches.append(self.now)
        if not self.up:
            raise FetchError("http_status", "HTTP 503")
        return self.body

    def run(self, remote: RemoteKeySet, seconds: float) -> None:
        """What the refresh thread does for ``seconds``: wait ``next_delay()``, fetch."""
        end = self.now + seconds
        while self.now + remote.next_delay() <= end:
            self.now += remote.next_delay()
            remote.refresh_now()
            assert len(self.fetches) < 5000, f"{len(self.fetches)} fetches: polling the IdP"
        self.now = end

    def since(self, moment: float) -> list[float]:
        return [t for t in self.fetches if t > moment]


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def simulated(monkeypatch: pytest.MonkeyPatch, idp: SimulatedIdP, **settings: Any) -> RemoteKeySet:
    monkeypatch.setattr(jwks, "fetch", idp.fetch)
    settings = {"cache_seconds": 300, "min_refresh_seconds": 30, **settings}
    remote = RemoteKeySet(
        "https://idp.example.com/jwks", ["RS256"], start=False, clock=idp.clock, **settings
    )
    remote.refresh_now()  # what the thread does first
    return remote


def test_an_idp_outage_is_met_with_backoff_and_stale_keys(
    monkeypatch: pytest.MonkeyPatch, rsa_key: SigningKey
) -> None:
    # 0.8 x cache_seconds into an outage, every process used to poll the IdP 20 times a second
    idp = SimulatedIdP(jwks_document(rsa_key))
    seen: list[dict[str, Any]] = []
    remote = simulated(monkeypatch, idp, emit=lambda event, level: seen.append(event))
    ring = remote.ring
    idp.run(remote, 600)
    assert gaps(idp.fetches) == [240, 240]  # healthy: refreshed at 0.8 x cache_seconds
    down = idp.now
    idp.up = False
    idp.run(remote, 3 * 3600)
    failed = idp.since(down)
    waits = gaps(failed)
    assert failed[0] - idp.fetches[2] == 240  # the outage is met at the regular refresh
    assert waits[0] == 30  # then retried after jwks_min_refresh_seconds, as the README says
    assert min(waits) >= 30
    assert 60 <= waits[2] <= 120  # doubling, jittered below each step
    assert max(waits) <= 300  # capped at cache_seconds: a recovery is seen within it
    assert min(waits[5:]) >= 150
    assert len(failed) <= 3 * 3600 / 150 + 5
    assert remote.ring is ring  # stale keys kept serving all along
    assert [e["outcome"] for e in seen].count("serving_stale") == len(failed)

    idp.up = True
    back = idp.now
    idp.run(remote, 1000)
    recovered = idp.since(back)
    assert recovered[0] - back <= 300
    assert gaps(recovered) == [240] * (len(recovered) - 1)  # the regular schedule again
    assert remote.ring is ring  # the same document: the same ring


@pytest.mark.parametrize(
    ("min_refresh", "cache", "first", "cap"),
    [(30, 300, 30, 300), (0, 300, 1, 300), (0, 0.1, 1, 1), (60, 10, 60, 60)],
)
def test_retries_without_any_keys_back_off_too(
    monkeypatch: pytest.MonkeyPatch,
    rsa_key: SigningKey,
    min_refresh: float,
    cache: float,
    first: float,
    cap: float,
) -> None:
    idp = SimulatedIdP(jwks_document(rsa_key), up=False)
    remote = simulated(
        monkeypatch, idp, cache_seconds=cache, min_refresh_seconds=min_refresh, emit=no_event
    )
    idp.run(remote, 3600)
    assert remote.ring is None
    waits = gaps(idp.fetches)
    assert waits[0] == first  # a floor of 1 s even with jwks_min_refresh_seconds=0
    assert first <= min(waits)
    assert max(waits) <= cap
    assert max(waits) >= cap / 2  # the retries did back off as far as the cap


def test_retries_are_jittered(monkeypatch: pytest.MonkeyPatch, rsa_key: SigningKey) -> None:
    # processes that met the outage together must not retry together
    delays = set()
    for _ in range(5):
        idp = SimulatedIdP(jwks_document(rsa_key), up=False)
        remote = simulated(monkeypatch, idp, emit=no_event)
        for _ in range(4):
            idp.now += remote.next_delay()
            remote.refresh_now()
        delays.add(remote.next_delay())
    assert len(delays) > 1


def test_a_failed_refetch_for_a_kid_does_not_bring_the_refresh_forward(
    monkeypatch: pytest.MonkeyPatch, rsa_key: SigningKey
) -> None:
    idp = SimulatedIdP(jwks_document(rsa_key))
    remote = simulated(monkeypatch, idp, emit=no_event)
    idp.now += 235
    idp.up = False
    assert not remote.refresh("new-kid")
    assert remote.next_delay() == 30  # not 5: the interval follows a failed fetch
    idp.now += 30
    idp.up = True
    assert remote.refresh("new-kid") is False  # fetched, still unknown
    assert remote.next_delay() == 240  # a success restarts the regular schedule


def no_event(event: dict[str, Any], level: int) -> None:
    pass


# -- fork (gunicorn --preload, multiprocessing) ---------------------------------------------


def kids(remote: RemoteKeySet) -> set[str | None]:
    return {key.kid for key in remote.ring.keys} if remote.ring is not None else set()


def fork_child(check: Callable[[], int]) -> int:
    """Fork; the child runs ``check`` and exits with its code.  The child's pid."""
    with warnings.catch_warnings():  # Python 3.12+ warns that forking a threaded process may hang
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            code = check()
        finally:
            os._exit(code)
    return pid


def child_exit_code(pid: int, timeout: float = 5.0) -> int | None:
    """The child's exit code; None if it hung (a lock copied held): then it is killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_refreshes_on_its_own(
    server: JWKSServer, rsa_key: SigningKey, new_key: SigningKey
) -> None:
    # gunicorn --preload builds the middleware in the master: each worker needs its own
    # refresh thread, or a key the IdP retires keeps verifying there until a restart
    remote = RemoteKeySet(
        server.url, ["RS256"], timeout=0.5, cache_seconds=0.5, min_refresh_seconds=30
    )
    parent_thread = remote._thread

    def check() -> int:
        thread = remote._thread
        if thread is None or thread is parent_thread or not thread.is_alive():
            return 1
        deadline = time.monotonic() + 4.0  # the refresh interval is 0.4 s
        while kids(remote) != {"rs256-2"}:
            if time.monotonic() > deadline:
                return 2
            time.sleep(0.02)
        return 0

    try:
        assert kids(remote) == {"rs256-1"}
        pid = fork_child(check)
        server.set("ok", jwks_document(new_key))  # rs256-1 retired after the fork
        code = child_exit_code(pid)
        assert code == 0, {1: "no refresh thread", 2: "rotation missed", None: "hung"}.get(code)
    finally:
        remote.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_fork_during_a_fetch_leaves_the_child_free_to_fetch(
    server: JWKSServer, rsa_key: SigningKey, new_key: SigningKey
) -> None:
    # the parent's fetch in flight and a lock held at fork() are copied, but the
    # threads that would end them are not
    remote = RemoteKeySet(
        server.url, ["RS256"], timeout=1.0, cache_seconds=300, min_refresh_seconds=0
    )
    server.delay = 0.6
    fetching = threading.Thread(target=remote.refresh_now)
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with remote._condition:
            held.set()
            release.wait(5)

    holding = threading.Thread(target=hold_the_lock)

    def check() -> int:
        started = time.monotonic()
        found = remote.refresh("rs256-2")  # an unknown kid: the child fetches itself
        if not found:
            return 1
        if time.monotonic() - started > 0.5:
            return 2
        return 0

    try:
        fetching.start()
        assert server.wait_for_hits(2)
        server.delay = 0.0  # only the parent's fetch is slow
        server.set("ok", jwks_document(rsa_key, new_key))
        holding.start()
        assert held.wait(5)
        assert remote._fetching
        pid = fork_child(check)
        release.set()
        code = child_exit_code(pid)
        assert code == 0, {1: "no fetch", 2: "waited for the parent", None: "hung"}.get(code)
    finally:
        release.set()
        holding.join(5)
        fetching.join(5)
        remote.close()
