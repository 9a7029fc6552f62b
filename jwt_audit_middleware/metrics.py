"""Prometheus metrics (contract §11): denial rates to alert on without parsing logs.

``pip install 'jwt-audit-middleware[metrics]'`` and ``metrics=True`` (the
default registry) or ``metrics=<a CollectorRegistry>`` publish:

========================================  =========  ====================================
name                                      type       labels
========================================  =========  ====================================
``jwt_audit_requests_total``              counter    ``outcome``, ``reason`` ("" allowed)
``jwt_audit_verify_seconds``              histogram  ``cache`` = ``hit`` | ``miss``
``jwt_audit_jwks_fetches_total``          counter    ``result`` = ``ok`` | ``error``
``jwt_audit_alerts_total``                counter    ``reason``
``jwt_audit_sink_events_total``           counter    ``sink``, ``result`` (written, spilled)
``jwt_audit_sink_queue_depth``            gauge      ``sink``
========================================  =========  ====================================

One set of collectors per registry (``Metrics.for_registry``): several
middlewares, sinks and key sets publishing on one registry share its series,
and registering twice is never attempted.  Everything a request pays is
resolved at start-up: labelled children are looked up once (``labels()`` costs
a microsecond, ``inc()`` a third of one), so a counted request is a dict
look-up and an ``inc()``.  Sinks count on their writer thread.

``instrument(option, audit, gate)`` is the one call a middleware makes at
construction; with ``metrics=False`` it does nothing and nothing of
``prometheus_client`` is imported.  Under gunicorn with
``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client's multiprocess mode
applies as to any of its metrics (the queue-depth gauge sums the live
processes).
"""

from __future__ import annotations

import logging
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from .cache import ObservedTokenCache
from .events import ALLOWED, DENIED, REASONS, WOULD_DENY

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric


# What ``instrument()`` needs of the audit logger and the gate, which sit above
# this module (they, or what they import, import it).
class _Audit(Protocol):
    def publish(self, metrics: Metrics) -> None: ...


class _Gate(Protocol):
    cache: Any
    verifier: Any


#: Upper bounds of ``jwt_audit_verify_seconds``: a cache hit takes a few
#: microseconds, a first-seen verification tens to hundreds.
VERIFY_BUCKETS = (
    0.0000025,
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.05,
    float("inf"),
)

#: The reasons of abuse detection's ``alert`` events (contract §9).
ALERT_REASONS = ("denial_burst_ip", "denial_burst_subject", "token_shared", "revoked_token_used")

#: Sink label of the package's handlers; others use ``sink_name`` or their class name.
SINK_NAMES = {"JSONLinesHandler": "jsonl", "SQLAuditHandler": "sql"}

REQUEST_OUTCOMES = (ALLOWED, DENIED, WOULD_DENY)

_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[Any, Metrics] = weakref.WeakKeyDictionary()
#: The ``Metrics`` of every middleware built with ``metrics=``: where sink
#: handlers attached to ``jwt_audit`` publish unless given their own.
_middleware_metrics: list[weakref.ref[Metrics]] = []
_instrumented: weakref.WeakKeyDictionary[Any, Metrics] = weakref.WeakKeyDictionary()


class _Children(dict[tuple[str, str | None], Any]):
    """``(outcome, reason)`` -> the counter child; ``None`` for what is not a request.

    Every documented pair is resolved at start-up; a reason an app made up is
    resolved on first use.  The disconnect event of a websocket (outcome
    ``closed``) is not a second request.
    """

    def __init__(self, counter: Any) -> None:
        super().__init__()
        self._counter = counter
        self[ALLOWED, None] = counter.labels(ALLOWED, "")
        for reason in REASONS:
            for outcome in (DENIED, WOULD_DENY):
                self[outcome, reason] = counter.labels(outcome, reason)

    def __missing__(self, key: tuple[str, str | None]) -> Any:
        outcome, reason = key
        child = None
        if outcome in REQUEST_OUTCOMES:
            child = self._counter.labels(outcome, "" if reason is None else str(reason)[:64])
        with _lock:
            if len(self) < 1024:  # bounded: a label set per made-up reason at most
                self[key] = child
        return child


def multiprocess_mode() -> bool:
    """Whether prometheus_client runs in multiprocess mode (its own test, at import)."""
    from prometheus_client import values  # noqa: PLC0415 - optional extra

    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _Count:
    """One counter series on the request path: an ``int`` incremented without a lock.

    ``prometheus_client``'s ``inc()`` takes a lock and checks its argument
    (about 0.4 µs); this is one attribute add, atomic under the GIL as
    ``TokenCache.hits`` is.  Read at scrape time by ``_Collector``.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class _Observations:
    """One histogram series on the request path: a count per bucket and a sum, no lock."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(VERIFY_BUCKETS)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(VERIFY_BUCKETS, amount)] += 1  # le: the first bound >= amount
        self.sum += amount


class _FastCounter:
    """A labelled counter of ``_Count`` children (the request path's, single-process mode)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._children: dict[tuple[str, ...], _Count] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> _Count:
        """The child of ``values`` (made once)."""
        with self._lock:
            return self._children.setdefault(values, _Count())

    def family(self, *, samples: bool = True) -> Metric:
        from prometheus_client.core import CounterMetricFamily  # noqa: PLC0415 - optional

        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        if samples:
            for values, child in list(self._children.items()):
                family.add_metric(list(values), child.value)
        return family


class _FastHistogram:
    """A labelled histogram of ``_Observations`` children, over ``VERIFY_BUCKETS``."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._children: dict[tuple[str, ...], _Observations] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> _Observations:
        """The child of ``values`` (made once)."""
        with self._lock:
            return self._children.setdefault(values, _Observations())

    def family(self, *, samples: bool = True) -> Metric:
        from prometheus_client.core import HistogramMetricFamily  # noqa: PLC0415 - optional
        from prometheus_client.utils import floatToGoString  # noqa: PLC0415 - optional

        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        if samples:
            for values, child in list(self._children.items()):
                total, buckets = 0, []
                for bound, count in zip(VERIFY_BUCKETS, list(child.counts), strict=True):
                    total += count
                    buckets.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
                family.add_metric(list(values), buckets, child.sum)
        return family


class _Collector:
    """Publishes the request path's lock-free series on a registry, read at scrape time."""

    def __init__(self, *families: _FastCounter | _FastHistogram) -> None:
        self._families = families

    def describe(self) -> list[Metric]:
        return [family.family(samples=False) for family in self._families]

    def collect(self) -> list[Metric]:
        return [family.family() for family in self._families]


class SinkSeries:
    """The series one sink label publishes on one registry: written, spilled, queue depth."""

    __slots__ = ("queue", "spilled", "written")

    def __init__(self, written: Any, spilled: Any, queue: Any) -> None:
        self.written = written
        self.spilled = spilled
        self.queue = queue


class Metrics:
    """The ``jwt_audit_*`` collectors of one registry and their pre-resolved children.

    Build it with ``Metrics.for_registry(registry)`` (one per registry); the
    methods are what the middleware's parts call.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415 - optional extra

        requests_doc = "Requests by outcome (allowed, denied, would_deny) and denial reason"
        verify_doc = "Time to decide on a presented token: a cache look-up (hit) or verified (miss)"
        self.requests_counter: Any
        self.verify: Any
        if multiprocess_mode():  # the values must be prometheus_client's own, in its files
            self.requests_counter = Counter(
                "jwt_audit_requests", requests_doc, ("outcome", "reason"), registry=registry
            )
            self.verify = Histogram(
                "jwt_audit_verify_seconds",
                verify_doc,
                ("cache",),
                buckets=VERIFY_BUCKETS,
                registry=registry,
            )
        else:
            self.requests_counter = _FastCounter(
                "jwt_audit_requests", requests_doc, ("outcome", "reason")
            )
            self.verify = _FastHistogram("jwt_audit_verify_seconds", verify_doc, ("cache",))
            registry.register(_Collector(self.requests_counter, self.verify))
        #: ``(outcome, reason)`` -> counter child (``AuditLogger.request_event`` counts here)
        self.requests = _Children(self.requests_counter)
        self.verify_hit = self.verify.labels("hit")
        self.verify_miss = self.verify.labels("miss")
        self.jwks = Counter(
            "jwt_audit_jwks_fetches",
            "Fetches of JWKS URLs, by result",
            ("result",),
            registry=registry,
        )
        self.jwks_ok = self.jwks.labels("ok")
        self.jwks_error = self.jwks.labels("error")
        self.alerts_counter = Counter(
            "jwt_audit_alerts",
            "Alerts of abuse detection, by reason",
            ("reason",),
            registry=registry,
        )
        self._alerts = {reason: self.alerts_counter.labels(reason) for reason in ALERT_REASONS}
        self.sink_events = Counter(
            "jwt_audit_sink_events",
            "Audit events a sink handler wrote, or spilled to its local fallback",
            ("sink", "result"),
            registry=registry,
        )
        self.sink_queue = Gauge(
            "jwt_audit_sink_queue_depth",
            "Events queued in a sink handler, waiting for its writer thread",
            ("sink",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._sinks: dict[str, SinkSeries] = {}

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> Metrics:
        """The one ``Metrics`` of ``registry``, built on first use."""
        with _lock:
            metrics = _by_registry.get(registry)
            if metrics is None:
                metrics = _by_registry[registry] = cls(registry)
            return metrics

    # -- what the parts call ---------------------------------------------------

    def request(self, outcome: str, reason: str | None) -> None:
        """Count one request's verdict (``AuditLogger.request_event`` does it inline)."""
        child = self.requests[outcome, reason]
        if child is not None:
            child.inc()

    def verified(self, seconds: float, hit: bool) -> None:
        """Observe one decision on a presented token: from the cache (``hit``) or verified."""
        (self.verify_hit if hit else self.verify_miss).observe(seconds)

    def jwks_fetch(self, ok: bool) -> None:
        """Count one fetch of a JWKS URL."""
        (self.jwks_ok if ok else self.jwks_error).inc()

    def alert(self, reason: str) -> None:
        """Count one ``alert`` event of abuse detection."""
        child = self._alerts.get(reason)
        if child is None:
            child = self._alerts.setdefault(reason, self.alerts_counter.labels(str(reason)[:64]))
        child.inc()

    def sink(self, name: str) -> SinkSeries:
        """The written, spilled and queue-depth children of the sink label ``name``."""
        with _lock:
            series = self._sinks.get(name)
            if series is None:
                series = self._sinks[name] = SinkSeries(
                    self.sink_events.labels(name, "written"),
                    self.sink_events.labels(name, "spilled"),
                    self.sink_queue.labels(name),
                )
            return series


def metrics_for(option: object) -> Metrics | None:
    """The ``Metrics`` an option asks for: ``False``/``None`` none, ``True`` the default registry.

    Anything else must be a ``prometheus_client.CollectorRegistry``
    (``Settings`` has checked that already for the ``metrics`` option).
    """
    if option is None or option is False:
        return None
    if option is True:
        from prometheus_client import REGISTRY  # noqa: PLC0415 - optional extra

        return Metrics.for_registry(REGISTRY)
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - optional extra

    if not isinstance(option, CollectorRegistry):
        raise TypeError("metrics: expected True, False or a prometheus_client CollectorRegistry")
    return Metrics.for_registry(option)


def instrument(option: object, audit: _Audit, gate: _Gate) -> Metrics | None:
    """Make one middleware's parts publish on the registry ``option`` names.

    Called once at construction (``Lifecycle``); ``option`` is
    ``settings.metrics``.  Counts each request's verdict (the audit logger),
    times each cache hit and each verification (the gate's cache and
    verifier), counts JWKS fetches (the gate's key sets), and makes the sink
    handlers attached to ``jwt_audit`` (now or later) publish here unless
    they have a registry of their own.  A second call for the same gate does
    nothing more.  Returns the ``Metrics`` (``None`` with metrics off).
    """
    metrics = metrics_for(option)
    if metrics is None:
        return None
    with _lock:
        if gate in _instrumented:
            return _instrumented[gate]
        _instrumented[gate] = metrics
        if not any(ref() is metrics for ref in _middleware_metrics):
            _middleware_metrics[:] = [ref for ref in _middleware_metrics if ref() is not None]
            _middleware_metrics.append(weakref.ref(metrics))
    audit.publish(metrics)
    _time_verifications(gate, metrics)
    for keyset in gate.verifier.remote_key_sets:
        keyset.publish(metrics)
    _bind_attached_sinks()
    return metrics


def middleware_metrics() -> list[Metrics]:
    """The ``Metrics`` of the middlewares built with ``metrics=``, oldest first."""
    with _lock:
        return [m for m in (ref() for ref in _middleware_metrics) if m is not None]


def _bind_attached_sinks() -> None:
    # duck-typed: the sinks sit above this module (they import it)
    for handler in logging.getLogger("jwt_audit").handlers:
        bind = getattr(handler, "publish_to_middleware_metrics", None)
        if bind is not None:
            bind()


def _time_verifications(gate: _Gate, metrics: Metrics) -> None:
    """Observe ``jwt_audit_verify_seconds``: cache hits by the cache, the rest by the verifier.

    ``hit``: the look-up in the verified-token cache that answered the
    request (``ObservedTokenCache``, which the gate's cache becomes: this runs
    at construction, before any request filled it), so the ``hit`` count is
    the cache's ``hits``.  ``miss``: one verification of a token's signature
    and claims (``Verifier.verify``, timed whether it accepts or refuses).
    Requests without a token, or on an exempt path, are not observed.
    """
    cache = gate.cache
    if cache is not None:
        if not isinstance(cache, ObservedTokenCache):
            cache = gate.cache = ObservedTokenCache.like(cache)
        cache.observe_hit = metrics.verify_hit.observe
    verifier = gate.verifier
    verify: Callable[[str, str], Any] = verifier.verify
    miss = metrics.verify_miss.observe

    def timed_verify(token: str, fingerprint: str) -> Any:
        start = perf_counter()
        try:
            return verify(token, fingerprint)
        finally:
            miss(perf_counter() - start)

    verifier.verify = timed_verify


__all__ = [
    "ALERT_REASONS",
    "SINK_NAMES",
    "VERIFY_BUCKETS",
    "Metrics",
    "SinkSeries",
    "instrument",
    "metrics_for",
    "middleware_metrics",
]
