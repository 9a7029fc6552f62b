"""The state stores of abuse detection (contract §9): the same cases in memory and on Redis.

Redis comes from ``JWTAUDIT_TEST_REDIS_URL`` (``.ci/services.sh``): without it the
Redis cases skip locally and fail when ``CI=true``.  Each Redis case works under a
key prefix of its own, so runs sharing one server do not meet.  Times are given
explicitly in each probe (a store compares them, it does not read the clock), so
windows and lockouts pass without sleeping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jwt_audit_middleware.state import (
    DENIAL_BURST_IP,
    DENIAL_BURST_SUBJECT,
    NOTHING,
    REVOKED_TOKEN_USED,
    TOKEN_SHARED,
    Alert,
    Answer,
    Lockout,
    MemoryStore,
    Probe,
    StateStore,
    Thresholds,
    open_store,
)

IN_CI = os.environ.get("CI", "").lower() == "true"
T0 = float(int(time.time()))  # a real time: Redis TTLs are set relative to it
LIMITS = Thresholds(
    window_seconds=10, denials_per_ip=3, denials_per_subject=2, ips_per_token=3, lockout_seconds=0
)
LOCKING = Thresholds(
    window_seconds=10, denials_per_ip=3, denials_per_subject=2, ips_per_token=3, lockout_seconds=5
)


def redis_url() -> str:
    url = os.environ.get("JWTAUDIT_TEST_REDIS_URL")
    if not url:
        if IN_CI:
            pytest.fail("JWTAUDIT_TEST_REDIS_URL is not set; CI must run .ci/services.sh first")
        pytest.skip("JWTAUDIT_TEST_REDIS_URL not set (run .ci/services.sh)")
    pytest.importorskip("redis")
    return url


def redis_store(url: str, prefix: str | None = None, **options: Any) -> Any:
    from jwt_audit_middleware.state_redis import RedisStore

    # a generous deadline: these cases are about semantics, not a loaded machine's latency
    options.setdefault("timeout", 2.0)
    return RedisStore(url, prefix=prefix or f"jwt_audit_test:{uuid.uuid4().hex[:12]}:", **options)


def drop_keys(store: Any) -> None:
    client = store.client
    for key in client.scan_iter(match=store.prefix + "*", count=1000):
        client.delete(key)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    made = redis_store(redis_url())
    try:
        yield made
    finally:
        drop_keys(made)
        made.close()


def deny(
    store: StateStore,
    now: float,
    ip: str | None = "203.0.113.7",
    limits: Thresholds = LIMITS,
    **fields: Any,
) -> Answer:
    fields.setdefault("denial", "invalid_signature")
    return store.probe(Probe(now=now, client_ip=ip, **fields), limits)


def reasons(answer: Answer) -> list[str]:
    return [alert.reason for alert in answer.alerts]


# -- denial bursts --------------------------------------------------------------------


def test_ip_burst_fires_at_the_threshold_and_once_per_window(store: StateStore) -> None:
    assert deny(store, T0) == NOTHING
    assert deny(store, T0 + 1) == NOTHING
    third = deny(store, T0 + 2)
    assert third.alerts == (Alert(DENIAL_BURST_IP, "203.0.113.7", 3),)
    assert third.ip_locked_until is None
    for step in range(20):  # the same window: no second alert however many come
        assert deny(store, T0 + 2.5 + step * 0.1).alerts == ()
    # the window of the alert has passed, the burst goes on: one alert again
    assert reasons(deny(store, T0 + 12)) == [DENIAL_BURST_IP]
    assert deny(store, T0 + 12.5).alerts == ()


def test_ip_burst_counts_only_inside_the_sliding_window(store: StateStore) -> None:
    deny(store, T0)
    deny(store, T0 + 5)
    # T0 is exactly ``window`` ago: out of the window (times > now - window count)
    assert deny(store, T0 + 10).alerts == ()
    assert reasons(deny(store, T0 + 10.5)) == [DENIAL_BURST_IP]


def test_ips_are_counted_apart(store: StateStore) -> None:
    for i in range(2):
        for ip in ("198.51.100.1", "198.51.100.2"):
            assert deny(store, T0 + i, ip=ip).alerts == ()
    assert reasons(deny(store, T0 + 3, ip="198.51.100.2")) == [DENIAL_BURST_IP]


def test_subject_burst(store: StateStore) -> None:
    first = deny(store, T0, ip="198.51.100.1", subject="alice", denial="insufficient_scope")
    assert first == NOTHING
    second = deny(store, T0 + 1, ip="198.51.100.2", subject="alice", denial="insufficient_scope")
    assert second.alerts == (Alert(DENIAL_BURST_SUBJECT, "alice", 2),)
    assert deny(store, T0 + 2, ip="198.51.100.3", subject="alice").alerts == ()


def test_both_bursts_in_one_probe(store: StateStore) -> None:
    limits = Thresholds(10, 2, 2, 3, 0)
    deny(store, T0, subject="bob", limits=limits)
    answer = deny(store, T0 + 1, subject="bob", limits=limits)
    assert reasons(answer) == [DENIAL_BURST_IP, DENIAL_BURST_SUBJECT]


@pytest.mark.parametrize("reason", ["internal_error", "key_unavailable", "locked_out"])
def test_uncounted_denials(store: StateStore, reason: str) -> None:
    for i in range(10):
        assert deny(store, T0 + i * 0.1, subject="carol", denial=reason) == NOTHING


def test_allowed_requests_do_not_count(store: StateStore) -> None:
    for i in range(10):
        probe = Probe(now=T0 + i * 0.1, client_ip="203.0.113.7", subject="dave")
        assert store.probe(probe, LIMITS) == NOTHING


# -- token sharing ----------------------------------------------------------------------


def shared(store: StateStore, now: float, ip: str, fingerprint: str = "sha256:00aa") -> Answer:
    probe = Probe(now=now, client_ip=ip, subject="erin", fingerprint=fingerprint)
    return store.probe(probe, LIMITS)


def test_token_seen_from_distinct_ips(store: StateStore) -> None:
    assert shared(store, T0, "198.51.100.1") == NOTHING
    for _ in range(5):  # the same IPs again are not more IPs
        assert shared(store, T0 + 1, "198.51.100.1") == NOTHING
        assert shared(store, T0 + 1, "198.51.100.2") == NOTHING
    assert shared(store, T0 + 2, "198.51.100.3").alerts == (Alert(TOKEN_SHARED, "sha256:00aa", 3),)
    assert shared(store, T0 + 3, "198.51.100.4").alerts == ()
    assert shared(store, T0 + 3, "198.51.100.1", fingerprint="sha256:00bb") == NOTHING


def test_token_ips_slide_out_of_the_window(store: StateStore) -> None:
    shared(store, T0, "198.51.100.1")
    shared(store, T0 + 1, "198.51.100.2")
    assert shared(store, T0 + 10.5, "198.51.100.3") == NOTHING  # .1 has left the window
    assert shared(store, T0 + 10.6, "198.51.100.1").alerts[0].reason == TOKEN_SHARED


# -- revocation ------------------------------------------------------------------------


def test_revoked_jti_until_its_end(store: StateStore) -> None:
    store.revoke_jti("jti-1", until=T0 + 30, now=T0)
    probe = Probe(now=T0 + 1, client_ip="203.0.113.9", jti="jti-1", fingerprint="sha256:11")
    answer = store.probe(probe, LIMITS)
    assert answer.revoked
    assert answer.alerts == (Alert(REVOKED_TOKEN_USED, "sha256:11", 1),)
    probe.now = T0 + 2
    assert store.probe(probe, LIMITS) == Answer(revoked=True)  # one alert per window
    probe.now = T0 + 30
    assert store.probe(probe, LIMITS) == NOTHING
    other = Probe(now=T0 + 1, client_ip="203.0.113.9", jti="jti-2")
    assert store.probe(other, LIMITS) == NOTHING


def test_revoked_subject_older_tokens_only(store: StateStore) -> None:
    store.revoke_subject("frank", now=T0, until=T0 + 100)
    older = Probe(now=T0 + 1, client_ip="203.0.113.9", subject="frank", issued_at=T0 - 60)
    newer = Probe(now=T0 + 1, client_ip="203.0.113.9", subject="frank", issued_at=T0 + 1)
    no_iat = Probe(now=T0 + 1, client_ip="203.0.113.9", subject="frank")
    stranger = Probe(now=T0 + 1, client_ip="203.0.113.9", subject="grace", issued_at=T0 - 60)
    assert store.probe(older, None).revoked
    assert store.probe(no_iat, None).revoked
    assert not store.probe(newer, None).revoked
    assert not store.probe(stranger, None).revoked
    older.now = T0 + 100
    assert not store.probe(older, None).revoked


def test_revocation_counts_as_a_denial(store: StateStore) -> None:
    store.revoke_subject("heidi", now=T0, until=None)
    for i in range(2):
        probe = Probe(
            now=T0 + 1 + i, client_ip=f"198.51.100.{i}", subject="heidi", issued_at=T0 - 1
        )
        answer = store.probe(probe, LIMITS)
        assert answer.revoked
    assert reasons(answer) == [DENIAL_BURST_SUBJECT]


def test_revocation_check_hook_denial_alerts(store: StateStore) -> None:
    probe = Probe(now=T0, client_ip="203.0.113.9", fingerprint="sha256:22", denial="revoked")
    answer = store.probe(probe, LIMITS)
    assert not answer.revoked  # the list does not say so; the hook did
    assert reasons(answer) == [REVOKED_TOKEN_USED]


def test_revocations_listed(store: StateStore) -> None:
    store.revoke_jti("jti-9", until=T0 + 60, now=T0)
    store.revoke_jti("jti-gone", until=T0 + 1, now=T0)
    store.revoke_subject("ivan", now=T0, until=None)
    listed = {(r.kind, r.value): r for r in store.revocations(T0 + 2)}
    assert set(listed) == {("jti", "jti-9"), ("subject", "ivan")}
    assert listed["jti", "jti-9"].until == pytest.approx(T0 + 60)
    assert listed["jti", "jti-9"].revoked_at == pytest.approx(T0)
    assert listed["subject", "ivan"].until is None


# -- detection off: answers, never writes ---------------------------------------------------


@pytest.mark.parametrize("limits", [LIMITS, None], ids=["count-false", "no-thresholds"])
def test_probes_that_do_not_count_never_write(store: StateStore, limits: Thresholds | None) -> None:
    for i in range(10):
        probe = Probe(
            now=T0 + i * 0.1,
            client_ip="203.0.113.7",
            subject="judy",
            fingerprint=f"sha256:{i}",
            denial="invalid_signature",
            count=limits is None,
        )
        assert store.probe(probe, None if limits is None else limits) == NOTHING
    store.revoke_jti("jti-x", until=T0 + 60, now=T0)
    probe = Probe(now=T0 + 2, client_ip="203.0.113.7", jti="jti-x", count=False)
    assert store.probe(probe, LIMITS) == Answer(revoked=True)
    # nothing was counted: one more denial is the first of its window
    assert deny(store, T0 + 3, subject="judy") == NOTHING
    if not isinstance(store, MemoryStore):
        names = set(store.client.scan_iter(match=store.prefix + "*"))  # type: ignore[attr-defined]
        assert not any(":fp:" in name or ":lk:" in name for name in names)


# -- lockout ---------------------------------------------------------------------------------


def test_lockout_set_answered_and_ends_by_itself(store: StateStore) -> None:
    deny(store, T0, limits=LOCKING)
    deny(store, T0 + 1, limits=LOCKING)
    crossed = deny(store, T0 + 2, limits=LOCKING)
    assert crossed.alerts == (Alert(DENIAL_BURST_IP, "203.0.113.7", 3, T0 + 7),)
    assert crossed.ip_locked_until is None  # the crossing request is denied for its own reason
    locked = store.probe(Probe(now=T0 + 3, client_ip="203.0.113.7"), LOCKING)
    assert locked == Answer(ip_locked_until=T0 + 7)
    for i in range(10):  # locked probes are not counted (a lock does not renew itself)
        assert deny(store, T0 + 3 + i * 0.1, limits=LOCKING).alerts == ()
    assert store.lockouts(T0 + 4) == [Lockout("ip", "203.0.113.7", T0 + 7)]
    assert store.probe(Probe(now=T0 + 3, client_ip="198.51.100.1"), LOCKING) == NOTHING
    assert store.probe(Probe(now=T0 + 7, client_ip="203.0.113.7"), LOCKING) == NOTHING
    assert store.lockouts(T0 + 7) == []


def test_subject_lockout(store: StateStore) -> None:
    deny(store, T0, ip="198.51.100.1", subject="kim", limits=LOCKING)
    crossed = deny(store, T0 + 1, ip="198.51.100.2", subject="kim", limits=LOCKING)
    assert crossed.alerts == (Alert(DENIAL_BURST_SUBJECT, "kim", 2, T0 + 6),)
    probe = Probe(now=T0 + 2, client_ip="198.51.100.3", subject="kim")
    assert store.probe(probe, LOCKING) == Answer(subject_locked_until=T0 + 6)


def test_report_only_lockout_is_set_but_requests_still_count(store: StateStore) -> None:
    limits = Thresholds(10, 3, 2, 3, 5, enforce_lockout=False)
    for i in range(3):
        answer = deny(store, T0 + i, limits=limits)
    assert answer.alerts[0].locked_until == T0 + 7
    later = deny(store, T0 + 3, limits=limits, subject="lou")
    assert later.ip_locked_until == T0 + 7  # reported ...
    assert store.lockouts(T0 + 3) == [Lockout("ip", "203.0.113.7", T0 + 7)]
    crossed = deny(store, T0 + 4, limits=limits, subject="lou")  # ... and counted
    assert reasons(crossed) == [DENIAL_BURST_SUBJECT]


def test_clear_lockouts(store: StateStore) -> None:
    for i in range(3):
        deny(store, T0 + i, limits=LOCKING, ip="198.51.100.0")
    for i in range(2):
        deny(store, T0 + i, limits=LOCKING, ip="198.51.100.9", subject="mia")
    assert {(lock.kind, lock.value) for lock in store.lockouts(T0 + 3)} == {
        ("ip", "198.51.100.0"),
        ("subject", "mia"),
    }
    assert store.clear_lockout("ip", "198.51.100.0")
    assert not store.clear_lockout("ip", "198.51.100.0")
    assert store.probe(Probe(now=T0 + 3, client_ip="198.51.100.0"), LOCKING) == NOTHING
    # a cleared key starts afresh: not locked again by its next denial
    assert deny(store, T0 + 3, ip="198.51.100.0", limits=LOCKING) == NOTHING
    assert store.clear_lockouts() == 1
    assert store.lockouts(T0 + 3) == []
    assert store.clear_lockouts() == 0
    with pytest.raises(ValueError, match="kind"):
        store.clear_lockout("token", "x")


def test_aprobe_answers_like_probe(store: StateStore) -> None:
    import asyncio

    async def run() -> list[Answer]:
        answers = [
            await store.aprobe(Probe(now=T0 + i, client_ip="203.0.113.8", denial="expired"), LIMITS)
            for i in range(3)
        ]
        if not isinstance(store, MemoryStore):
            await store.aclose()  # type: ignore[attr-defined]
        return answers

    answers = asyncio.run(run())
    assert [reasons(a) for a in answers] == [[], [], [DENIAL_BURST_IP]]
    assert asyncio.run(run())[0].alerts == ()  # a second event loop: a client of its own


# -- memory only -----------------------------------------------------------------------------


def test_memory_is_bounded_under_a_flood_of_keys() -> None:
    store = MemoryStore(max_keys=100)
    for i in range(5000):
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        store.probe(
            Probe(now=T0 + i * 0.001, client_ip=ip, subject=f"s{i}", fingerprint=f"f{i}"),
            LIMITS,
        )
        deny(store, T0 + i * 0.001, ip=ip, subject=f"s{i}")
    for name in ("_ip_denials", "_subject_denials", "_token_ips"):
        assert len(getattr(store, name)) <= 100
    assert all(len(ends) <= 100 for ends in store._alerted.values())


def test_open_store_without_url_is_memory() -> None:
    assert isinstance(open_store(None), MemoryStore)


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# -- Redis only ------------------------------------------------------------------------------


def test_every_redis_key_has_a_ttl() -> None:
    store = redis_store(redis_url())
    try:
        for i in range(3):
            deny(store, T0 + i, subject="nina", limits=LOCKING, fingerprint="sha256:33")
        store.revoke_jti("jti-t", until=T0 + 60, now=T0)
        store.revoke_subject("olga", now=T0, until=T0 + 60)
        store.revoke_subject("forever", now=T0, until=None)
        names = list(store.client.scan_iter(match=store.prefix + "*"))
        assert len(names) >= 8
        for name in names:
            ttl = store.client.pttl(name)
            if name.endswith(":rv:sub:forever"):
                assert ttl == -1  # asked for: kept until revoked otherwise
            else:
                assert ttl > 0, name
    finally:
        drop_keys(store)
        store.close()


def test_nothing_to_look_up_is_no_round_trip() -> None:
    pytest.importorskip("redis")
    store = redis_store(f"redis://127.0.0.1:{free_port()}/0")  # nobody listens there
    try:
        assert store.probe(Probe(now=T0, client_ip="203.0.113.1", count=False), LIMITS) is NOTHING
        assert store.probe(Probe(now=T0, client_ip="203.0.113.1"), None) is NOTHING
        import redis

        with pytest.raises(redis.ConnectionError):
            store.probe(Probe(now=T0, client_ip="203.0.113.1", subject="x", count=False), None)
    finally:
        store.close()


def test_two_clients_at_once_reach_exactly_one_alert_at_the_threshold() -> None:
    url = redis_url()
    prefix = f"jwt_audit_test:{uuid.uuid4().hex[:12]}:"
    stores = [redis_store(url, prefix=prefix, timeout=5.0) for _ in range(4)]
    limits = Thresholds(60, 50, 1000, 1000, 0)
    alerts: list[Alert] = []
    start = threading.Barrier(len(stores))

    def hammer(store: Any) -> None:
        start.wait()
        for i in range(40):
            alerts.extend(deny(store, T0 + i * 0.001, limits=limits).alerts)

    threads = [threading.Thread(target=hammer, args=(store,)) for store in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert alerts == [Alert(DENIAL_BURST_IP, "203.0.113.7", 50)]
    finally:
        drop_keys(stores[0])
        for store in stores:
            store.close()


def test_redacted_never_shows_a_password() -> None:
    pytest.importorskip("redis")
    from jwt_audit_middleware.state_redis import redacted

    assert redacted("redis://:s3cret@cache.internal:6380/2") == "cache.internal:6380"
    assert redacted("rediss://user:s3cret@[::1]/0") == "[::1]:6379"
    assert redacted("unix:///run/redis.sock?password=s3cret") == "/run/redis.sock"


# -- failover ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, to stop and start without disturbing others."""

    def __init__(self, binary: str, directory: str) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.directory],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Any) -> Iterator[PrivateRedis]:
    pytest.importorskip("redis")
    binary = os.environ.get("JWTAUDIT_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        if IN_CI:
            pytest.fail("no redis-server; CI must run .ci/services.sh first")
        pytest.skip("no redis-server (run .ci/services.sh)")
    server = PrivateRedis(binary, str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_redis_stopped_mid_use(private_redis: PrivateRedis) -> None:
    from jwt_audit_middleware.state_redis import FailoverStore, RedisStore

    events: list[dict[str, Any]] = []
    store = FailoverStore(
        RedisStore(private_redis.url, timeout=2.0), MemoryStore(), events.append, ping_interval=0.05
    )
    try:
        assert deny(store, T0) == NOTHING
        assert store.blocking
        private_redis.stop()
        seen = []
        for i in range(1, 6):  # keeps answering, from memory now, without waiting
            start = time.perf_counter()
            seen.append(reasons(deny(store, T0 + i)))
            assert time.perf_counter() - start < 0.05
        # detection went on in memory, counting afresh: the 3rd denial there alerts
        assert seen == [[], [], [DENIAL_BURST_IP], [], []]
        assert not store.blocking
        assert store.lockouts(T0) == []  # administration falls back as well
        (lost,) = events
        assert lost["event"] == "state_event"
        assert lost["outcome"] == "store_lost"
        assert lost["reason"] == "connection_error"
        assert f"127.0.0.1:{private_redis.port}" in lost["detail"]
        assert lost["schema"] == "jwt-audit/1"
        private_redis.start()
        wait_for(lambda: len(events) == 2)
        restored = events[1]
        assert restored["outcome"] == "store_restored"
        assert f"127.0.0.1:{private_redis.port}" in restored["detail"]
        assert store.blocking
        for i in range(3):  # Redis again, its connections renewed: no second loss
            deny(store, T0 + 10 + i)
        assert [e["outcome"] for e in events] == ["store_lost", "store_restored"]
        assert store.primary.client.exists(store.primary.prefix + "dn:ip:203.0.113.7")
    finally:
        store.close()


def test_async_probe_falls_back_too(private_redis: PrivateRedis) -> None:
    import asyncio

    events: list[dict[str, Any]] = []
    store = open_store(private_redis.url, events.append, timeout=2.0)

    async def run() -> None:
        assert await store.aprobe(Probe(now=T0, client_ip="203.0.113.5"), LIMITS) == NOTHING
        private_redis.stop()
        start = time.perf_counter()
        answer = await store.aprobe(Probe(now=T0, client_ip="203.0.113.5", subject="p"), None)
        assert answer == NOTHING
        assert time.perf_counter() - start < 0.05
        await store.aclose()  # type: ignore[attr-defined]

    try:
        asyncio.run(run())
        assert [e["outcome"] for e in events] == ["store_lost"]
    finally:
        store.close()


def test_a_redis_that_does_not_answer_is_a_timeout() -> None:
    from jwt_audit_middleware.state_redis import LOSE_AFTER_TIMEOUTS, FailoverStore, RedisStore

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://:pw-not-shown@127.0.0.1:{silent.getsockname()[1]}/0"
        events: list[dict[str, Any]] = []
        redis_store = RedisStore(url, timeout=0.01)
        store = FailoverStore(redis_store, MemoryStore(), events.append, ping_interval=5)
        try:
            for n in range(LOSE_AFTER_TIMEOUTS):  # a slow answer or two is no outage
                assert events == []
                took = timed(lambda n=n: deny(store, T0 + n))
                assert took < 0.1  # the 10 ms deadline, and a loaded machine's scheduling
            assert timed(lambda: deny(store, T0 + 10)) < 0.02  # lost: not even tried
            (lost,) = events
            assert lost["reason"] == "timeout"
            assert "pw-not-shown" not in str(lost)
        finally:
            store.close()
