"""The state of abuse detection in Redis, and falling back to memory when Redis is gone.

``RedisStore`` keeps the counters, lockouts and revocation list of
``state.MemoryStore`` in Redis, so every process and machine naming one Redis
shares them.  One probe is one round trip: a Lua script (loaded once, run by
``EVALSHA``) reads the locks and revocations of the probe's keys, counts,
alerts and locks atomically, and answers.  Every key it writes has a TTL, so
Redis cleans up after itself (a subject revoked without an end is the one
exception: it was asked for).

``FailoverStore`` wraps one: when Redis errs or misses its deadline (a few
milliseconds), that probe and every following one are answered by a
``MemoryStore`` without waiting on Redis at all, one ``state_event`` says so, and a
daemon thread pings Redis until it answers again, then switches back with a
second ``state_event``.  A request is never failed or held by the store.

Imported only when ``state_url`` is set (it needs the ``redis`` extra).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from .events import app_event
from .state_types import (
    NOTHING,
    UNCOUNTED,
    Alert,
    Answer,
    Lockout,
    Probe,
    Revocation,
    StateEvents,
    StateStore,
    Thresholds,
)

# not under "jwt_audit": the audit handlers would store these lines beside the events
LOG = logging.getLogger("jwt_audit_middleware.state")

#: Default deadline of one probe, seconds: a request never waits longer on Redis.
PROBE_TIMEOUT = 0.01
#: Missed deadlines in a row that count as Redis lost (a connection error counts at once).
LOSE_AFTER_TIMEOUTS = 3
#: Default key prefix (several apps can share one Redis under different prefixes).
PREFIX = "jwt_audit:"
#: How often a lost Redis is pinged, seconds.
PING_INTERVAL = 1.0

# KEYS: 1 revoked jti, 2 revoked subject, 3 ip lock, 4 subject lock, 5 ip denials,
# 6 subject denials, 7 IPs of the token, 8-11 alert markers: ip burst, subject burst,
# token shared, revoked token used.  An empty name: not asked.
# ARGV: 1 now, 2 count (1/0), 3 iat or "", 4 window s, 5 denials per ip, 6 per subject,
# 7 ips per token, 8 lockout s, 9 enforce lockout (1/0), 10 member nonce, 11 ip,
# 12 subject, 13 fingerprint, 14 denial counts (1, 0; 2: no denial yet, counts if revoked),
# 15 revoked by the hook (1/0).
# Reply: {ip lock until or "", subject lock until or "", revoked 1/0,
#         reason, key, count, locked until or "", ...}.
_PROBE = """
local now_s = ARGV[1]
local now = tonumber(now_s)
local function f(x) return string.format('%.17g', x) end
local function split(v)
  local sep = string.find(v, ',', 1, true)
  return tonumber(string.sub(v, 1, sep - 1)), string.sub(v, sep + 1)
end
local revoked = 0
if KEYS[1] ~= '' then
  local v = redis.call('GET', KEYS[1])
  if v then
    local _, till = split(v)
    if tonumber(till) > now then revoked = 1 end
  end
end
if revoked == 0 and KEYS[2] ~= '' then
  local v = redis.call('GET', KEYS[2])
  if v then
    local at, till = split(v)
    if (till == '' or tonumber(till) > now) and (ARGV[3] == '' or tonumber(ARGV[3]) < at) then
      revoked = 1
    end
  end
end
if ARGV[2] ~= '1' then return {'', '', revoked} end
local function lock_of(key)
  if key == '' then return '' end
  local v = redis.call('GET', key)
  if v and tonumber(v) > now then return v end
  return ''
end
local ip_lock, sub_lock = lock_of(KEYS[3]), lock_of(KEYS[4])
local reply = {ip_lock, sub_lock, revoked}
if (ip_lock ~= '' or sub_lock ~= '') and ARGV[9] == '1' then return reply end
local window = tonumber(ARGV[4])
local window_ms = window * 1000
local cutoff = f(now - window)
local function first_alert(key)
  local v = redis.call('GET', key)
  if v and tonumber(v) > now then return false end
  redis.call('SET', key, f(now + window), 'PX', window_ms)
  return true
end
local function add(key, member, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
  redis.call('ZADD', key, now_s, member)
  redis.call('ZREMRANGEBYRANK', key, 0, -(limit + 1))
  redis.call('PEXPIRE', key, window_ms)
  return redis.call('ZCARD', key)
end
local lockout = tonumber(ARGV[8])
local function burst(reason, events, marker, lock, key, limit)
  if events == '' then return end
  local n = add(events, now_s .. ':' .. ARGV[10], limit)
  if n >= limit and first_alert(marker) then
    local till = ''
    if lockout > 0 then
      till = f(now + lockout)
      redis.call('SET', lock, till, 'PX', lockout * 1000)
    end
    for _, x in ipairs({reason, key, n, till}) do reply[#reply + 1] = x end
  end
end
if ARGV[14] == '1' or (ARGV[14] == '2' and revoked == 1) then
  burst('denial_burst_ip', KEYS[5], KEYS[8], KEYS[3], ARGV[11], tonumber(ARGV[5]))
  burst('denial_burst_subject', KEYS[6], KEYS[9], KEYS[4], ARGV[12], tonumber(ARGV[6]))
end
if KEYS[7] ~= '' then
  local limit = tonumber(ARGV[7])
  local n = add(KEYS[7], ARGV[11], limit)
  if n >= limit and first_alert(KEYS[10]) then
    for _, x in ipairs({'token_shared', ARGV[13], n, ''}) do reply[#reply + 1] = x end
  end
end
if KEYS[11] ~= '' and (revoked == 1 or ARGV[15] == '1') and first_alert(KEYS[11]) then
  for _, x in ipairs({'revoked_token_used', ARGV[13], 1, ''}) do reply[#reply + 1] = x end
end
return reply
"""


def redacted(url: str) -> str:
    """Where ``url`` points, for messages: ``host:port`` (or the socket path), never a password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or "unix socket"
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_options(timeout: float, *, asyncio: bool = False) -> dict[str, Any]:
    # no retry: a retry is a second wait, and the fallback is memory
    retry = AsyncRetry(NoBackoff(), 0) if asyncio else Retry(NoBackoff(), 0)
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": retry,
        "decode_responses": True,
    }


class RedisStore:
    """Counters, lockouts and the revocation list in Redis (``redis://``, ``rediss://``, ``unix://``).

    ``timeout`` bounds every call (connect, send, read), seconds: a probe that
    misses it raises ``redis.RedisError`` (``FailoverStore`` answers from memory
    instead).  The constructor does not connect.
    """

    def __init__(self, url: str, *, timeout: float = PROBE_TIMEOUT, prefix: str = PREFIX) -> None:
        self.url = url
        self.address = redacted(url)
        self.prefix = prefix
        self.timeout = timeout
        self.client: redis.Redis = redis.Redis.from_url(url, **_client_options(timeout))
        self._script = self.client.register_script(_PROBE)
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[int, redis.asyncio.Redis, Any]
        ] = weakref.WeakKeyDictionary()
        self._generation = 0

    # -- the per-request call ---------------------------------------------------------

    @property
    def blocking(self) -> bool:
        """Always: a probe is a round trip to Redis."""
        return True

    def probe(self, probe: Probe, thresholds: Thresholds | None) -> Answer:
        """Answer and count one request: one round trip, none when there is nothing to ask."""
        request = self._request(probe, thresholds)
        if request is None:
            return NOTHING
        keys, args = request
        return _answer(self._script(keys=keys, args=args, client=self.client))

    async def aprobe(self, probe: Probe, thresholds: Thresholds | None) -> Answer:
        """``probe()`` on this event loop's own asyncio client (never blocks the loop)."""
        request = self._request(probe, thresholds)
        if request is None:
            return NOTHING
        keys, args = request
        script = await self._async_script()
        return _answer(await script(keys=keys, args=args))

    async def _async_script(self) -> Any:
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is not None and entry[0] == self._generation:
            return entry[2]
        if entry is not None:  # connections from before an outage: drop them
            await _quietly_close(entry[1])
        client = redis.asyncio.Redis.from_url(
            self.url, **_client_options(self.timeout, asyncio=True)
        )
        script = client.register_script(_PROBE)
        self._loops[loop] = (self._generation, client, script)
        return script

    def _request(
        self, probe: Probe, thresholds: Thresholds | None
    ) -> tuple[list[str], list[str]] | None:
        """The script's keys and arguments; ``None`` when there is nothing to ask."""
        p = self.prefix
        jti, subject, ip, fingerprint = probe.jti, probe.subject, probe.client_ip, probe.fingerprint
        counting = thresholds is not None and probe.count
        if not counting and jti is None and subject is None:
            return None
        keys = [
            "" if jti is None else f"{p}rv:jti:{jti}",
            "" if subject is None else f"{p}rv:sub:{subject}",
        ]
        if thresholds is None or not counting:
            return [*keys, *[""] * 9], [repr(probe.now), "0", _opt(probe.issued_at)]
        denial = probe.denial
        counted = denial not in UNCOUNTED  # no denial yet: counted if the list revokes
        keys += [
            "" if ip is None else f"{p}lk:ip:{ip}",
            "" if subject is None else f"{p}lk:subject:{subject}",
            f"{p}dn:ip:{ip}" if counted and ip is not None else "",
            f"{p}dn:subject:{subject}" if counted and subject is not None else "",
            f"{p}fp:{fingerprint}" if fingerprint is not None and ip is not None else "",
            f"{p}al:denial_burst_ip:{ip}",
            f"{p}al:denial_burst_subject:{subject}",
            f"{p}al:token_shared:{fingerprint}",
            "" if fingerprint is None else f"{p}al:revoked_token_used:{fingerprint}",
        ]
        args = [
            repr(probe.now),
            "1",
            _opt(probe.issued_at),
            str(thresholds.window_seconds),
            str(thresholds.denials_per_ip),
            str(thresholds.denials_per_subject),
            str(thresholds.ips_per_token),
            str(thresholds.lockout_seconds),
            "1" if thresholds.enforce_lockout else "0",
            os.urandom(6).hex(),
            ip or "",
            subject or "",
            fingerprint or "",
            "0" if not counted else "2" if denial is None else "1",
            "1" if denial == "revoked" else "0",
        ]
        return keys, args

    # -- administration ---------------------------------------------------------------

    def revoke_jti(self, jti: str, until: float, now: float) -> None:
        """Deny the token with this ``jti`` until ``until``; the key expires then."""
        key = f"{self.prefix}rv:jti:{jti}"
        if until <= now:
            self.client.delete(key)
            return
        self.client.set(key, f"{now!r},{until!r}", px=max(1, int((until - now) * 1000)))

    def revoke_subject(self, subject: str, now: float, until: float | None) -> None:
        """Deny every token of ``subject`` issued before ``now``; kept until ``until`` (or ever)."""
        key = f"{self.prefix}rv:sub:{subject}"
        value = f"{now!r},{'' if until is None else repr(until)}"
        if until is None:
            self.client.set(key, value)
        elif until > now:
            self.client.set(key, value, px=max(1, int((until - now) * 1000)))
        else:
            self.client.delete(key)

    def revocations(self, now: float) -> list[Revocation]:
        """The revocation list in force."""
        found: list[Revocation] = []
        for kind, tag in (("jti", "rv:jti:"), ("subject", "rv:sub:")):
            for key, value in self._scan(self.prefix + tag):
                at, _, till = value.partition(",")
                until = float(till) if till else None
                if until is None or until > now:
                    found.append(Revocation(kind, key, float(at), until))
        return found

    def lockouts(self, now: float) -> list[Lockout]:
        """The lockouts in force."""
        return [
            Lockout(kind, key, float(value))
            for kind in ("ip", "subject")
            for key, value in self._scan(f"{self.prefix}lk:{kind}:")
            if float(value) > now
        ]

    def clear_lockout(self, kind: str, value: str) -> bool:
        """End one lockout early (and forget the key's count); false when there was none."""
        reason = _reason_of(kind)
        p = self.prefix
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(f"{p}lk:{kind}:{value}")
        pipe.delete(f"{p}dn:{kind}:{value}", f"{p}al:{reason}:{value}")
        return bool(pipe.execute()[0])

    def clear_lockouts(self) -> int:
        """End every lockout (and forget the counts of the keys locked); how many there were."""
        cleared = 0
        for kind in ("ip", "subject"):
            for key, _ in self._scan(f"{self.prefix}lk:{kind}:"):
                cleared += self.clear_lockout(kind, key)
        return cleared

    def _scan(self, prefix: str) -> Iterable[tuple[str, str]]:
        """``(key without prefix, value)`` of every string key under ``prefix``."""
        names = list(self.client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
        for start in range(0, len(names), 500):
            batch = names[start : start + 500]
            for name, value in zip(batch, self.client.mget(batch), strict=True):
                if value is not None:
                    yield str(name)[len(prefix) :], str(value)

    def ping(self) -> bool:
        """Whether Redis answers now; if so, the probe script is loaded there again.

        A restarted Redis has lost its script cache: loading it here, in the ping
        thread, spares the first probe after the switch back a reload (~11 ms).
        """
        if not self.client.ping():
            return False
        self.client.script_load(_PROBE)
        return True

    def reconnect(self) -> None:
        """Drop every connection (after an outage they are dead); the next call reconnects."""
        self._generation += 1
        self.client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close this event loop's asyncio client (at the app's shutdown)."""
        entry = self._loops.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await _quietly_close(entry[1])

    def close(self) -> None:
        """Close the blocking client (asyncio clients: ``aclose()`` on their loop)."""
        self.client.close()


def _opt(value: float | None) -> str:
    return "" if value is None else repr(value)


def _reason_of(kind: str) -> str:
    if kind == "ip":
        return "denial_burst_ip"
    if kind == "subject":
        return "denial_burst_subject"
    raise ValueError(f"unknown lockout kind {kind!r} (kinds: ip, subject)")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _answer(reply: list[Any]) -> Answer:
    ip_lock, sub_lock, revoked = reply[0], reply[1], reply[2]
    alerts = tuple(
        Alert(
            reply[i], reply[i + 1], int(reply[i + 2]), float(reply[i + 3]) if reply[i + 3] else None
        )
        for i in range(3, len(reply), 4)
    )
    if not (ip_lock or sub_lock or revoked or alerts):
        return NOTHING
    return Answer(_float(ip_lock), _float(sub_lock), bool(revoked), alerts)


def _float(text: str) -> float | None:
    return float(text) if text else None


async def _quietly_close(client: redis.asyncio.Redis) -> None:
    try:
        await client.aclose()
    except (redis.RedisError, OSError):  # closing what is already broken
        LOG.debug("closing an asyncio Redis client failed", exc_info=True)


# -- failover -----------------------------------------------------------------------------


class FailoverStore:
    """A ``RedisStore`` that falls back to a ``MemoryStore`` while Redis is unreachable.

    A connection error, or ``LOSE_AFTER_TIMEOUTS`` missed deadlines in a row,
    switches every probe to memory at once (no request waits on Redis while it
    is lost) and emits one ``state_event`` ``store_lost``; a single missed
    deadline is answered from memory without declaring Redis lost, so one slow
    answer on a busy machine does not flap the store.  A daemon thread then pings
    Redis every ``ping_interval`` seconds and, when it answers, switches back and
    emits ``store_restored``.  Counts made in
    memory meanwhile stay there: detection continues, not the shared view.
    """

    def __init__(
        self,
        primary: RedisStore,
        fallback: StateStore,
        events: StateEvents | None = None,
        *,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.events = events
        self.ping_interval = ping_interval
        self.lost = False
        self._timeouts = 0  # missed deadlines in a row
        self._switch = threading.Lock()
        self._closed = threading.Event()
        self._pinger: threading.Thread | None = None

    @property
    def blocking(self) -> bool:
        """While Redis is in use (not lost): a probe is a round trip."""
        return not self.lost

    def probe(self, probe: Probe, thresholds: Thresholds | None) -> Answer:
        """Redis's answer, or memory's while Redis is lost."""
        if not self.lost:
            try:
                answer = self.primary.probe(probe, thresholds)
            except (redis.RedisError, OSError) as error:
                self._failed(error)
            else:
                self._timeouts = 0
                return answer
        return self.fallback.probe(probe, thresholds)

    async def aprobe(self, probe: Probe, thresholds: Thresholds | None) -> Answer:
        """``probe()`` without blocking the event loop."""
        if not self.lost:
            try:
                answer = await self.primary.aprobe(probe, thresholds)
            except (redis.RedisError, OSError) as error:
                self._failed(error)
            else:
                self._timeouts = 0
                return answer
        return self.fallback.probe(probe, thresholds)

    def _failed(self, error: BaseException) -> None:
        """A probe failed: lose Redis now, or after a few missed deadlines in a row."""
        if isinstance(error, redis.TimeoutError | TimeoutError):
            self._timeouts += 1
            if self._timeouts < LOSE_AFTER_TIMEOUTS:
                return  # this probe is answered from memory; Redis stays in use
        self._lose(error)

    def _lose(self, error: BaseException) -> None:
        with self._switch:
            if self.lost or self._closed.is_set():
                return
            self.lost = True
            self._pinger = threading.Thread(
                target=self._ping_until_back, name="jwt-audit-state-ping", daemon=True
            )
            self._pinger.start()
        reason = (
            "timeout"
            if isinstance(error, redis.TimeoutError | TimeoutError)
            else (
                "connection_error"
                if isinstance(error, redis.ConnectionError | OSError)
                else "error"
            )
        )
        self._emit(
            "store_lost",
            reason,
            f"redis at {self.primary.address} {reason.replace('_', ' ')}; "
            "abuse detection continues in process memory",
        )

    def _ping_until_back(self) -> None:
        while not self._closed.wait(self.ping_interval):
            try:
                self.primary.reconnect()
                if not self.primary.ping():
                    continue
            except (redis.RedisError, OSError):
                continue
            with self._switch:
                self.lost = False
                self._pinger = None
            self._emit(
                "store_restored",
                None,
                f"redis at {self.primary.address} answers again; abuse detection shared again",
            )
            return

    def _emit(self, outcome: str, reason: str | None, detail: str) -> None:
        LOG.warning("%s", detail)
        if self.events is None:
            return
        try:
            self.events(app_event("state_event", outcome, reason=reason, detail=detail))
        except Exception:  # a broken listener must not break a request
            LOG.exception("state_event listener failed")

    # -- administration: on Redis when it answers, else in memory ----------------------

    def revoke_jti(self, jti: str, until: float, now: float) -> None:
        """Revoke in Redis; while it is lost, in this process's memory too."""
        self.fallback.revoke_jti(jti, until, now)
        self._admin(lambda: self.primary.revoke_jti(jti, until, now))

    def revoke_subject(self, subject: str, now: float, until: float | None) -> None:
        """Revoke in Redis; while it is lost, in this process's memory too."""
        self.fallback.revoke_subject(subject, now, until)
        self._admin(lambda: self.primary.revoke_subject(subject, now, until))

    def revocations(self, now: float) -> list[Revocation]:
        """Redis's list (or memory's while lost)."""
        found = self._admin(lambda: self.primary.revocations(now))
        return list(self.fallback.revocations(now) if found is None else found)

    def lockouts(self, now: float) -> list[Lockout]:
        """Redis's lockouts (or memory's while lost)."""
        found = self._admin(lambda: self.primary.lockouts(now))
        return list(self.fallback.lockouts(now) if found is None else found)

    def clear_lockout(self, kind: str, value: str) -> bool:
        """End one lockout in Redis and in memory."""
        here = self.fallback.clear_lockout(kind, value)
        there = self._admin(lambda: self.primary.clear_lockout(kind, value))
        return bool(there) or here

    def clear_lockouts(self) -> int:
        """End every lockout in Redis and in memory."""
        here = self.fallback.clear_lockouts()
        there = self._admin(self.primary.clear_lockouts)
        return max(here, there or 0)

    def _admin(self, call: Any) -> Any:
        if self.lost:
            return None
        try:
            return call()
        except (redis.RedisError, OSError) as error:
            self._lose(error)
            return None

    async def aclose(self) -> None:
        """Close this event loop's asyncio client."""
        await self.primary.aclose()

    def close(self) -> None:
        """Stop pinging and close the connections."""
        self._closed.set()
        pinger = self._pinger
        if pinger is not None:
            pinger.join(timeout=2 * self.ping_interval + 1)
        self.primary.close()
        self.fallback.close()
