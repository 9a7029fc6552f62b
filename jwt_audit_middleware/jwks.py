"""Remote key sets: a JWKS URL, fetched off the request path and cached.

``RemoteKeySet`` holds the current ``KeyRing`` as an immutable snapshot that a
fetch replaces in one assignment, so the hot path reads one attribute and
never takes a lock.  Fetching happens only in threads (the set's own daemon
thread, or the worker thread an adapter hands a refresh to), never on an event
loop thread, and every fetch is bounded: a total deadline that also covers a
slowly dripping response, a size cap, a key-count cap, no redirects, and
``https://`` except for loopback hosts.  A failed fetch keeps the keys already
held (stale keys keep serving); it never raises into a request.

Refreshes happen in the background before ``cache_seconds`` run out, and when
a token names an unknown ``kid``: at most one fetch per
``min_refresh_seconds`` (failed fetches included), shared by every thread that
waits for it (single flight), with a short negative cache of unknown kids.
While the URL keeps failing, the background retries back off: from
``min_refresh_seconds`` (at least 1 s), doubling, jittered, up to
``cache_seconds``, so an outage of the identity provider is not met with a
storm of fetches from every process.
Key-lifecycle changes are audit events (``key_event``) on ``jwt_audit``.

After ``fork()`` (``gunicorn --preload``, multiprocessing) the child gets its
own refresh thread and fresh locks: threads are not inherited, and a lock or a
fetch in flight at the fork would otherwise stay held in the child for good,
while keys the identity provider retired kept verifying there.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .events import app_event
from .keys import KeyRing, VerificationKey, parse_jwks
from .urls import check_url, is_loopback, safe_location  # the URL checks moved; names kept here

if TYPE_CHECKING:
    from .metrics import Metrics

EmitEvent = Callable[[dict[str, Any], int], None]

#: Event name and outcomes of key-lifecycle events.
KEY_EVENT = "key_event"
KEY_ADDED = "key_added"
KEY_RETIRED = "key_retired"
FETCH_FAILED = "fetch_failed"
SERVING_STALE = "serving_stale"

DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_KEYS = 100
_MAX_UNKNOWN_KIDS = 4096
_CHUNK = 16 * 1024
_VERSIONS = itertools.count(1)  # shared, so the highest version marks the latest swap anywhere
_RETRY_FLOOR = 1.0  # seconds before retrying a failed fetch, whatever min_refresh_seconds says
_REFRESH_AT = 0.8  # of cache_seconds: the background refresh comes before the cache runs out
_MIN_DELAY = 0.05

internal_logger = logging.getLogger("jwt_audit.internal")
audit_logger = logging.getLogger("jwt_audit")


class FetchError(Exception):
    """A fetch failed: ``code`` is a short reason, ``detail`` a safe message."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def fetch(url: str, *, timeout: float, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """GET ``url`` within a total deadline of ``timeout`` seconds; the body, or ``FetchError``.

    Blocking: call it from a thread.  A watchdog closes the connection at the
    deadline, so neither a hanging server nor one that drips bytes (in the
    headers or the body) can hold the caller longer.  Redirects are failures.
    """
    problem = check_url(url)
    if problem is not None:
        raise FetchError("bad_url", f"the JWKS URL {problem}")
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    deadline = time.monotonic() + timeout
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    expired = threading.Event()

    def watchdog() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout, watchdog)
    timer.daemon = True
    timer.name = "jwt_audit-jwks-deadline"
    timer.start()
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request(
            "GET",
            target,
            headers={"Accept": "application/json", "User-Agent": "jwt-audit-middleware"},
        )
        response = connection.getresponse()
        if 300 <= response.status < 400:
            raise FetchError("redirect", f"HTTP {response.status}: redirects are not followed")
        if response.status != 200:
            raise FetchError("http_status", f"HTTP {response.status}")
        length = response.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > max_bytes:
            raise FetchError("too_large", f"the document exceeds {max_bytes} bytes")
        body = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError("timeout", f"no complete answer within {timeout:g} s")
            if connection.sock is not None:
                connection.sock.settimeout(remaining)
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            body += chunk
            if len(body) > max_bytes:
                raise FetchError("too_large", f"the document exceeds {max_bytes} bytes")
        if expired.is_set():
            raise FetchError("timeout", f"no complete answer within {timeout:g} s")
        return bytes(body)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError("timeout", f"no complete answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if expired.is_set():
            raise FetchError("timeout", f"no complete answer within {timeout:g} s") from None
        raise FetchError("connection", f"the request failed ({type(exc).__name__})") from None
    finally:
        timer.cancel()
        connection.close()
        timer.join()


def parse_document(body: bytes, algorithms: Iterable[str], max_keys: int) -> list[VerificationKey]:
    """The usable keys of a fetched JWKS document, or ``FetchError``."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise FetchError("invalid_document", "the document is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise FetchError("invalid_document", 'expected a JWKS document: {"keys": [...]}')
    if len(document["keys"]) > max_keys:
        raise FetchError("too_many_keys", f"the document has more than {max_keys} keys")
    try:
        return parse_jwks(document, algorithms)
    except ValueError as exc:
        raise FetchError("invalid_document", f"the document {exc}") from None
    except RecursionError:
        raise FetchError("invalid_document", "the document is too deeply nested") from None


class RemoteKeySet:
    """The keys published at a JWKS URL: fetched, cached, refreshed, never blocking a request.

    ``ring`` is the current snapshot (``None`` until a fetch succeeds).  The
    constructor starts a daemon thread that fetches at once and then before
    ``cache_seconds`` run out; outside an event loop (and unless ``wait`` is
    false) it waits for that first fetch, up to ``timeout``, so the first
    requests find keys.  ``refresh()``
    is the blocking, single-flight refetch for an unknown ``kid``; call it from
    a worker thread.  ``close()`` stops the thread.  ``clock`` (monotonic
    seconds) schedules the fetches; tests pass a simulated one.
    """

    def __init__(
        self,
        url: str,
        algorithms: Iterable[str],
        *,
        timeout: float = 5.0,
        cache_seconds: float = 300.0,
        min_refresh_seconds: float = 30.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_keys: int = DEFAULT_MAX_KEYS,
        issuer: str | None = None,
        emit: EmitEvent | None = None,
        start: bool = True,
        wait: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problem = check_url(url)
        if problem is not None:
            raise ValueError(f"the JWKS URL {problem}")
        self.url = url
        self.location = safe_location(url)
        self.algorithms = frozenset(algorithms)
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.max_bytes = max_bytes
        self.max_keys = max_keys
        self.issuer = issuer
        self.ring: KeyRing | None = None
        """The keys being served: replaced whole by a fetch, never mutated."""
        self.version = 0
        """Changes whenever ``ring`` is replaced (a cache of verdicts keys on it)."""
        self.fetches = 0
        """Fetches started; ``failures`` of those ended failed (``jwt_audit_jwks_fetches``)."""
        self.failures = 0
        self.fetched_at: float | None = None
        self._succeeded = 0
        self._published: list[Metrics] = []
        self._count_lock = threading.Lock()
        self._emit = emit
        self._clock = clock
        self._body: bytes | None = None
        self._kids: frozenset[str] = frozenset()
        self._condition = threading.Condition(threading.Lock())
        self._fetching = False
        self._completed = 0
        self._last_attempt = -float("inf")  # of a refetch for a kid, or of a failed fetch
        self._failures = 0  # in a row
        self._retry_at = -float("inf")  # after the last failure, backing off
        self._unknown: dict[str, float] = {}
        self._closed = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        _live.add(self)
        if start:
            self._start(wait=wait)

    # -- the hot path (lock-free reads) ------------------------------------

    def may_refresh(self, kid: str | None) -> bool:
        """Whether a request naming ``kid`` should wait for a refetch.

        True while a fetch is in flight (its result may hold the key) or when
        one is allowed (``min_refresh_seconds`` since the last attempt, and
        ``kid`` not in the negative cache).
        """
        if self._closed.is_set():
            return False
        if self._fetching:
            return True
        now = self._clock()
        if kid is not None:
            until = self._unknown.get(kid)
            if until is not None and until > now:
                return False
        return now - self._last_attempt >= self.min_refresh_seconds

    def _has(self, kid: str | None) -> bool:
        if self.ring is None:
            return False
        return kid is None or kid in self._kids

    # -- fetching ------------------------------------------------------------

    def refresh(self, kid: str | None = None) -> bool:
        """Refetch for ``kid`` unless it is known, rate-limited or already being fetched.

        Blocking (up to about ``timeout``): call it from a worker thread.
        Concurrent callers share one fetch.  True if the keys now include
        ``kid`` (for ``None``: if any keys are held).  Never raises.
        """
        with self._condition:
            if self._has(kid):
                return True
            if self._fetching:
                self._wait_for_fetch()
                found = self._has(kid)
                if not found:
                    self._remember_unknown(kid)
                return found
            if not self.may_refresh(kid):
                return False
            self._fetching = True
            self._last_attempt = self._clock()
        return self._run_fetch(kid)

    def refresh_now(self) -> bool:
        """Fetch now (the background schedule), sharing a fetch already in flight."""
        with self._condition:
            if self._fetching:
                self._wait_for_fetch()
                return self.ring is not None
            self._fetching = True
        self._run_fetch(None)
        return self.ring is not None

    def _wait_for_fetch(self) -> None:
        completed = self._completed
        deadline = time.monotonic() + self.timeout + 1.0
        while self._fetching and self._completed == completed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._condition.wait(remaining)

    def _run_fetch(self, kid: str | None) -> bool:
        try:
            self._fetch_and_swap()
        except Exception:  # a bug of ours must not reach a request
            internal_logger.error("jwt_audit: internal error fetching JWKS", exc_info=True)
            self._back_off()  # nor have the refresh thread retry it without a pause
        finally:
            with self._condition:
                self._fetching = False
                self._completed += 1
                self._condition.notify_all()
                self._first.set()
        found = self._has(kid)
        if not found:
            with self._condition:
                self._remember_unknown(kid)
        return found

    def _remember_unknown(self, kid: str | None) -> None:
        if kid is None:
            return
        if len(self._unknown) >= _MAX_UNKNOWN_KIDS:
            self._unknown.clear()
        self._unknown[kid] = self._clock() + self.min_refresh_seconds

    def publish(self, metrics: Metrics) -> None:
        """Count this set's fetches on ``metrics`` too, those already ended included (once)."""
        with self._count_lock:
            if metrics in self._published:
                return
            self._published = [*self._published, metrics]
            if self._succeeded:
                metrics.jwks_ok.inc(self._succeeded)
            if self.failures:
                metrics.jwks_error.inc(self.failures)

    def _count_fetch(self, ok: bool) -> None:
        with self._count_lock:
            if ok:
                self._succeeded += 1
            else:
                self.failures += 1
            for metrics in self._published:
                metrics.jwks_fetch(ok)

    def _fetch_and_swap(self) -> None:
        self.fetches += 1
        try:
            body = fetch(self.url, timeout=self.timeout, max_bytes=self.max_bytes)
            keys: list[VerificationKey] | None = None  # unchanged: keep the ring and its verdicts
            if body != self._body:
                keys = parse_document(body, self.algorithms, self.max_keys)
        except FetchError as failure:
            self._count_fetch(ok=False)
            self._failed(failure)
            return
        except Exception:
            self._count_fetch(ok=False)  # _run_fetch logs it
            raise
        self._count_fetch(ok=True)
        self._failures = 0
        self.fetched_at = self._clock()
        if keys is not None:
            self._swap(body, keys)

    def _swap(self, body: bytes, keys: list[VerificationKey]) -> None:
        ring = KeyRing(keys, self.algorithms)
        kids = frozenset(key.kid for key in keys if key.kid is not None)
        added, retired = sorted(kids - self._kids), sorted(self._kids - kids)
        first = self.ring is None
        self.ring = ring
        self._kids = kids
        self._body = body
        self.version = next(_VERSIONS)
        self._unknown.clear()
        anonymous = sum(1 for key in keys if key.kid is None)
        for new in added:
            self._event(KEY_ADDED, None, f"key published at {self.location}", kid=new)
        if first and anonymous:
            self._event(KEY_ADDED, None, f"{anonymous} key(s) without kid at {self.location}")
        for old in retired:
            self._event(KEY_RETIRED, None, f"key no longer published at {self.location}", kid=old)

    def _failed(self, failure: FetchError) -> None:
        self._back_off()
        detail = f"{self.location}: {failure.detail}"
        self._event(FETCH_FAILED, failure.code, detail, level=logging.WARNING)
        if self.ring is not None:
            age = self._clock() - (self.fetched_at or 0.0)
            self._event(
                SERVING_STALE,
                failure.code,
                f"keys fetched {age:.0f} s ago keep serving",
                level=logging.WARNING,
            )

    def _back_off(self) -> None:
        # Exponential from the minimum interval up to the cache lifetime, each wait
        # drawn from the upper half of its step so that processes which met the
        # outage together drift apart; never shorter than the minimum interval.
        now = self._clock()
        self._last_attempt = now
        self._failures += 1
        base = max(self.min_refresh_seconds, _RETRY_FLOOR)
        step = min(max(self.cache_seconds, base), base * 2.0 ** min(self._failures - 1, 32))
        jitter = random.uniform(step / 2, step)  # noqa: S311  (spreads load; not a secret)
        self._retry_at = now + max(base, jitter)

    def _event(
        self,
        outcome: str,
        reason: str | None,
        detail: str,
        *,
        kid: str | None = None,
        level: int = logging.INFO,
    ) -> None:
        try:
            event = app_event(
                KEY_EVENT, outcome, reason=reason, issuer=self.issuer, kid=kid, detail=detail
            )
            if self._emit is not None:
                self._emit(event, level)
            else:  # no audit logger handed down: the same record, through plain logging
                audit_logger.log(
                    level, "%s %s %s", KEY_EVENT, outcome, detail, extra={"jwt_audit": event}
                )
        except Exception:  # a broken handler must not stop key rotation
            internal_logger.error("jwt_audit: cannot emit a key event", exc_info=True)

    # -- background refresh --------------------------------------------------

    def _start(self, *, wait: bool) -> None:
        self._spawn(0.0)
        if wait and not on_event_loop():
            self._first.wait(self.timeout + 0.5)

    def _spawn(self, delay: float) -> None:
        thread = threading.Thread(
            target=_refresh_loop,
            args=(weakref.ref(self), self._closed, delay),
            name=f"jwt_audit-jwks {self.location}"[:80],
            daemon=True,
        )
        self._thread = thread
        weakref.finalize(self, self._closed.set)
        thread.start()

    def _after_fork(self) -> None:
        # In the child, which has only the thread that forked: the refresh thread,
        # a fetch in flight and whoever held the lock stayed in the parent.
        self._condition = threading.Condition(threading.Lock())
        self._count_lock = threading.Lock()
        self._fetching = False
        self._first = _event(self._first.is_set())
        closed = self._closed.is_set()
        self._closed = _event(closed)
        running = self._thread is not None and not closed
        self._thread = None
        if running:  # the parent's schedule goes on; a first fetch cut short starts again
            self._spawn(0.0 if self._completed == 0 else self.next_delay())

    def wait_first_fetch(self, timeout: float | None = None) -> bool:
        """Block until the first fetch has ended (well or not); False on timeout."""
        return self._first.wait(timeout)

    def next_delay(self) -> float:
        """Seconds until the background thread should fetch again.

        Before ``cache_seconds`` run out (at 0.8 of it) after a good fetch; after
        a failed one, at its backed-off retry time, or the regular time if later:
        a failure only ever postpones the next fetch.
        """
        regular = None
        if self.fetched_at is not None:
            regular = self.fetched_at + self.cache_seconds * _REFRESH_AT
        if self._failures:
            due = self._retry_at if regular is None else max(regular, self._retry_at)
        elif regular is not None:
            due = regular
        else:  # no fetch has ended yet
            return max(self.min_refresh_seconds, _RETRY_FLOOR)
        return max(due - self._clock(), _MIN_DELAY)

    def close(self) -> None:
        """Stop the background thread (idempotent); the keys held keep serving."""
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout + 1.0)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has been called."""
        return self._closed.is_set()

    def __repr__(self) -> str:
        keys = "no keys" if self.ring is None else f"{len(self.ring)} keys"
        return f"RemoteKeySet({self.location!r}, {keys})"


def _refresh_loop(ref: weakref.ref[RemoteKeySet], closed: threading.Event, delay: float) -> None:
    # Holds the key set only while working, so an abandoned one can be collected
    # (its finaliser sets ``closed`` and this thread ends).
    while not closed.wait(delay):
        keyset = ref()
        if keyset is None:
            return
        keyset.refresh_now()
        delay = keyset.next_delay()
        del keyset


def _event(is_set: bool) -> threading.Event:
    event = threading.Event()
    if is_set:
        event.set()
    return event


_live: weakref.WeakSet[RemoteKeySet] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for keyset in list(_live):
        try:
            keyset._after_fork()
        except Exception:  # one key set must not leave the others without a thread
            internal_logger.error("jwt_audit: cannot restart a JWKS refresh", exc_info=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def on_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop (where nothing may block)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


__all__ = [
    "FETCH_FAILED",
    "KEY_ADDED",
    "KEY_EVENT",
    "KEY_RETIRED",
    "SERVING_STALE",
    "FetchError",
    "RemoteKeySet",
    "check_url",
    "fetch",
    "is_loopback",
    "parse_document",
]
