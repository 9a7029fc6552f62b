"""The verified-token cache: hits skip verification, never the policy."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jwt_audit_middleware import Settings
from jwt_audit_middleware.cache import TokenCache
from jwt_audit_middleware.keys import build_keyring
from jwt_audit_middleware.policy import Gate
from jwt_audit_middleware.testing import SigningKey
from jwt_audit_middleware.verifier import Verifier


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gate_for(key: SigningKey, clock: Clock, monotonic: Clock | None = None, **options: Any) -> Gate:
    """A gate whose verifier reads ``clock`` and whose cache ages by ``monotonic``."""
    settings = Settings(**key.options(**options))
    gate = Gate(settings, Verifier(settings, clock=clock))
    if gate.cache is not None:
        gate.cache = TokenCache(settings.cache_size, monotonic=monotonic or Clock(0.0))
    return gate


def bearer(token: str) -> list[str]:
    return [f"Bearer {token}"]


def test_repeated_token_is_a_hit(rsa_key: SigningKey) -> None:
    clock = Clock(1_000_000.0)
    gate = gate_for(rsa_key, clock)
    token = rsa_key.token({"iat": 999_990, "exp": 1_000_300})
    first = gate.decide("/", bearer(token))
    second = gate.decide("/", bearer(token))
    assert first.allow
    assert second.allow
    assert second.token is first.token
    assert gate.cache is not None
    assert (gate.cache.hits, gate.cache.misses) == (1, 1)
    assert first.fingerprint == second.fingerprint


def test_token_expiring_while_cached_is_denied(rsa_key: SigningKey) -> None:
    clock = Clock(1_000_000.0)
    gate = gate_for(rsa_key, clock, leeway=5)
    token = rsa_key.token({"iat": 999_990, "exp": 1_000_010})
    assert gate.decide("/", bearer(token)).allow
    clock.now = 1_000_014.0  # past exp, within leeway: still served from the cache
    assert gate.decide("/", bearer(token)).allow
    clock.now = 1_000_015.0  # exp + leeway reached
    late = gate.decide("/", bearer(token))
    assert (late.allow, late.reason) == (False, "expired")
    assert late.event_base["subject"] == "alice"  # verified claims still reach the event


def test_ttl_bounds_tokens_without_exp(rsa_key: SigningKey) -> None:
    clock, monotonic = Clock(1_000_000.0), Clock(50.0)
    gate = gate_for(rsa_key, clock, monotonic, required_claims=[])
    token = rsa_key.token({"iat": 999_990}, expires_in=None)
    gate.decide("/", bearer(token))
    assert gate.cache is not None
    monotonic.now += gate.cache.ttl + 1
    assert gate.decide("/", bearer(token)).allow
    assert gate.cache.misses == 2  # re-verified after the TTL, not served stale


def test_a_clock_stepping_back_does_not_serve_a_token_not_yet_valid(
    rsa_key: SigningKey,
) -> None:
    # cached at 1_000_000 with nbf 999_990; then the wall clock steps back an hour
    clock = Clock(1_000_000.0)
    gate = gate_for(rsa_key, clock)
    token = rsa_key.token({"nbf": 999_990, "iat": 999_990, "exp": 1_000_300})
    assert gate.decide("/", bearer(token)).allow
    clock.now -= 3600
    again = gate.decide("/", bearer(token))
    assert (again.allow, again.reason) == (False, "not_yet_valid")  # as an uncached check says
    assert gate.cache is not None
    assert gate.cache.hits == 0


def test_the_wall_clock_running_ahead_does_not_stretch_an_entrys_life(
    rsa_key: SigningKey,
) -> None:
    # an entry made while the clock ran a day ahead lives ttl seconds, not a day more
    clock, monotonic = Clock(1_000_000.0 + 86_400), Clock(50.0)
    gate = gate_for(rsa_key, clock, monotonic, required_claims=[])
    token = rsa_key.token({"iat": 999_990}, expires_in=None)
    assert gate.decide("/", bearer(token)).allow
    clock.now -= 86_400  # corrected by NTP
    assert gate.cache is not None
    monotonic.now += gate.cache.ttl - 1
    assert gate.decide("/", bearer(token)).allow
    assert gate.cache.hits == 1
    monotonic.now += 2
    assert gate.decide("/", bearer(token)).allow
    assert (gate.cache.hits, gate.cache.misses) == (1, 2)


@pytest.mark.anyio
async def test_revocation_still_checked_on_hits(rsa_key: SigningKey) -> None:
    revoked: set[str] = set()
    clock = Clock(1_000_000.0)
    gate = gate_for(rsa_key, clock, revocation_check=lambda claims: claims["jti"] in revoked)
    token = rsa_key.token({"iat": 999_990, "exp": 1_000_300, "jti": "j1"})
    assert (await gate.resolve_async(gate.decide("/", bearer(token)))).allow
    revoked.add("j1")
    verdict = await gate.resolve_async(gate.decide("/", bearer(token)))
    assert gate.cache is not None
    assert gate.cache.hits == 1
    assert (verdict.allow, verdict.reason) == (False, "revoked")
    assert gate.resolve_sync(gate.decide("/", bearer(token))).reason == "revoked"


def test_path_scopes_still_checked_on_hits(rsa_key: SigningKey) -> None:
    gate = gate_for(rsa_key, Clock(1_000_000.0), path_scopes={"/admin": ["admin"]})
    token = rsa_key.token({"iat": 999_990, "exp": 1_000_300, "scope": "read"})
    assert gate.decide("/orders", bearer(token)).allow
    assert gate.decide("/admin", bearer(token)).reason == "insufficient_scope"


def test_key_rotation_invalidates_entries(keys: dict[str, SigningKey]) -> None:
    old, new = keys["RS256"], keys["ES256"]
    clock = Clock(1_000_000.0)
    settings = Settings(
        algorithms=["RS256", "ES256"], public_key=[old.public_pem or "", new.public_pem or ""]
    )
    verifier = Verifier(settings, clock=clock)
    gate = Gate(settings, verifier)
    token = old.token({"iat": 999_990, "exp": 1_000_300})
    assert gate.decide("/", bearer(token)).allow
    # the old key is retired: a new ring without it replaces the verifier's ring
    verifier.keyring = build_keyring(["ES256"], public_keys=[new.public_pem])
    retired = gate.decide("/", bearer(token))
    assert (retired.allow, retired.reason) == (False, "unknown_key")


def test_denials_are_never_cached(rsa_key: SigningKey, other_rsa_key: SigningKey) -> None:
    gate = gate_for(rsa_key, Clock(1_000_000.0))
    forged = other_rsa_key.token({"iat": 999_990, "exp": 1_000_300})
    expired = rsa_key.token({"iat": 1, "exp": 2})
    for token in (forged, expired, forged):
        assert not gate.decide("/", bearer(token)).allow
    assert gate.cache is not None
    assert len(gate.cache) == 0


def test_cache_size_zero_disables(rsa_key: SigningKey) -> None:
    gate = gate_for(rsa_key, Clock(1_000_000.0), cache_size=0)
    assert gate.cache is None
    token = rsa_key.token({"iat": 999_990, "exp": 1_000_300})
    assert gate.decide("/", bearer(token)).allow


def test_bounded_least_recently_used(keys: dict[str, SigningKey]) -> None:
    key = keys["HS256"]
    gate = gate_for(key, Clock(1_000_000.0), cache_size=3)
    tokens = [key.token({"iat": 999_990, "exp": 1_000_300, "n": n}) for n in range(4)]
    for token in tokens[:3]:
        gate.decide("/", bearer(token))
    gate.decide("/", bearer(tokens[0]))  # 0 becomes the most recently used
    gate.decide("/", bearer(tokens[3]))  # evicts 1, the least recently used
    assert gate.cache is not None
    assert len(gate.cache) == 3
    misses = gate.cache.misses
    gate.decide("/", bearer(tokens[0]))
    assert gate.cache.misses == misses
    gate.decide("/", bearer(tokens[1]))
    assert gate.cache.misses == misses + 1


def test_concurrent_threads_get_correct_answers(keys: dict[str, SigningKey]) -> None:
    key = keys["HS256"]
    gate = gate_for(key, Clock(1_000_000.0), cache_size=16)
    good = [key.token({"iat": 999_990, "exp": 1_000_300, "sub": f"user{n}"}) for n in range(40)]
    bad = [t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB") for t in good[:10]]
    errors: list[str] = []

    def worker(offset: int) -> None:
        for i in range(400):
            n = (i + offset) % len(good)
            verdict = gate.decide("/", bearer(good[n]))
            if not verdict.allow or verdict.token is None or verdict.token.subject != f"user{n}":
                errors.append(f"good {n}: {verdict.reason}")
            if i % 7 == 0:
                denied = gate.decide("/", bearer(bad[n % len(bad)]))
                if denied.allow:
                    errors.append(f"bad {n} allowed")

    threads = [threading.Thread(target=worker, args=(k * 5,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert gate.cache is not None
    assert len(gate.cache) <= 16


def test_withdrawn_key_never_served_from_cache_after_ring_swaps(
    rsa_key: SigningKey, other_rsa_key: SigningKey
) -> None:
    # A freed ring's id() can be reused by a later ring: the cache must not key on it.
    withdrawn, kept = rsa_key, other_rsa_key
    pems = [withdrawn.public_pem or "", kept.public_pem or ""]
    accepted = 0
    for _ in range(60):
        settings = Settings(algorithms=["RS256"], public_key=pems)
        verifier = Verifier(settings)
        gate = Gate(settings, verifier)
        token = withdrawn.token(headers={"kid": "none-such"})
        assert gate.decide("/", bearer(token)).allow
        verifier.keyring = build_keyring(["RS256"], public_keys=[kept.public_pem])
        verifier.keyring = build_keyring(["RS256"], public_keys=[kept.public_pem])
        accepted += gate.decide("/", bearer(token)).allow
    assert accepted == 0
