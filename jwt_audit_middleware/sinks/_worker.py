"""The machinery both sinks share: a bounded queue drained by a background thread.

``BackgroundHandler.emit()`` is all the request thread pays: ``enqueued()``
(what the queue keeps for a record) and one ``deque`` append (and, once per
batch, waking the writer).  I/O happens on the writer thread, in batches.
What happens when the queue is full is a policy, not an accident:

1. the request thread waits up to ``block_timeout`` seconds for room;
2. if there is still none, the record is *spilled*: written at once, on the
   calling thread, by ``spill()`` (the JSON-lines sink appends it to its own
   file; the SQL sink to a local JSON-lines spill file), and counted in
   ``stats()["spilled"]``; a warning is logged on ``jwt_audit_middleware.sinks``;
3. while the queue stays full (until the writer has drained it below half),
   further records spill at once, without waiting again, so a long outage does
   not add ``block_timeout`` to every request.

``flush()`` waits until everything queued before it is written; ``close()`` (and
process exit, through ``atexit`` and ``logging.shutdown``) drains the queue, and
what the writer still could not write by ``close_timeout`` is spilled too.
After ``fork()`` the child starts with an empty queue and its own writer thread.

The batch the writer holds (its "hand") belongs to exactly one side at a time,
under ``_hand_lock``: the writer while it writes, ``close()`` once it has given
up waiting and the writer is not writing.  A backoff between two attempts wakes
when ``close()`` starts and never sleeps past its deadline; a write still in
progress when ``close()`` stops waiting stays the writer's, which spills the
batch itself if that write fails.  So a batch is written or spilled, never
both, and never left on a queue nobody drains.

Metrics (contract §11): a handler given ``metrics=`` (``True`` or a
``prometheus_client`` registry), or attached to ``jwt_audit`` when a
middleware built with ``metrics=`` exists, counts ``written`` and ``spilled``
into ``jwt_audit_sink_events_total{sink,result}`` exactly where ``stats()``
counts them (the events of ``stats()`` before the binding are added then, so
the two agree), and its queue depth into ``jwt_audit_sink_queue_depth{sink}``,
refreshed by the writer thread at each wake-up and batch (at most
``flush_interval`` old) and on the spill path: nothing is added to ``emit()``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, ClassVar

from jwt_audit_middleware.audit import LOGGER_NAME, RECORD_ATTRIBUTE
from jwt_audit_middleware.metrics import SINK_NAMES, SinkSeries, metrics_for, middleware_metrics

#: Problems of the sinks themselves; not under "jwt_audit", so they never loop back.
sink_logger = logging.getLogger("jwt_audit_middleware.sinks")

_live: weakref.WeakSet[BackgroundHandler] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for handler in list(_live):
        handler.close()


def _reset_all_after_fork() -> None:
    for handler in list(_live):
        handler._after_fork()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)


class _Marker:
    """A ``flush()`` request travelling through the queue behind earlier records."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class BackgroundHandler(logging.Handler):
    """A ``logging.Handler`` whose writes happen on one background thread, in batches.

    Subclasses implement ``write_batch(prepared)`` (raise to have the batch
    kept and retried, see ``retryable``) and ``spill(items)`` (the last resort:
    write synchronously somewhere local), and may override ``enqueued(record)``,
    what the queue keeps for a record (by default the record itself).
    """

    #: How long ``close()`` waits for the writer before spilling what is left.
    close_timeout: float
    #: The ``sink`` label of its metrics (default: ``jsonl``, ``sql``, or the class name).
    sink_name: ClassVar[str | None] = None

    def __init__(
        self,
        level: int | str = logging.NOTSET,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        block_timeout: float = 0.1,
        close_timeout: float = 30.0,
        metrics: object = None,
    ) -> None:
        super().__init__(level)
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        if flush_interval <= 0 or block_timeout < 0 or close_timeout < 0:
            raise ValueError("flush_interval must be > 0, the timeouts >= 0")
        self.queue_size = queue_size
        self.batch_size = min(batch_size, queue_size)
        self.flush_interval = flush_interval
        self.block_timeout = block_timeout
        self.close_timeout = close_timeout
        self._counters = {"written": 0, "spilled": 0, "retries": 0, "failed_batches": 0}
        self._series: tuple[SinkSeries, ...] = ()
        self._own_metrics = False  # given metrics=: never rebound to a middleware's registry
        self._metrics_lock = threading.Lock()
        self._depth_reported = 0
        self._init_state()
        _live.add(self)
        if metrics is not None and metrics is not False:
            self.publish_metrics(metrics)

    # -- state (rebuilt after fork) --------------------------------------------

    def _init_state(self) -> None:
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._room = threading.Condition(threading.Lock())
        self._spilling = False
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._spill_lock = threading.Lock()
        self._stop = threading.Event()  # set by close(): a backoff ends early
        self._hand_lock = threading.Lock()
        self._in_hand: list[Any] | None = None  # the batch the writer took
        self._writing = False  # the writer is in write_batch (or its fallbacks)
        self._abandoned = False  # close() stopped waiting and took the queue
        self._held_markers: list[_Marker] = []  # of a batch given back to close()

    def _after_fork(self) -> None:
        # The parent's queued records are the parent's to write: dropping the
        # copies here is what keeps them from being written twice.
        self.createLock()
        self._init_state()
        self._metrics_lock = threading.Lock()
        self._depth_reported = 0  # the parent's queue is not this process's

    def _start(self) -> None:
        if not self._own_metrics and self in logging.getLogger(LOGGER_NAME).handlers:
            self.publish_to_middleware_metrics()
        with self._start_lock:
            if self._thread is None and not self._closed:
                thread = threading.Thread(
                    target=self._run, name=f"jwt-audit-{type(self).__name__}", daemon=True
                )
                thread.start()
                self._thread = thread

    # -- the request thread -------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:  # type: ignore[override]
        """Filter and enqueue; no handler lock (a ``deque`` append is thread-safe)."""
        if self.filters:
            result = self.filter(record)
            if not result:
                return False
            # Python 3.12+: a filter may return a replacement record
            record = result if isinstance(result, logging.LogRecord) else record  # type: ignore[redundant-expr,unused-ignore]
        self.emit(record)
        return record

    def emit(self, record: logging.LogRecord) -> None:
        """Enqueue ``record`` for the writer thread: the whole per-event cost."""
        try:
            item = self.enqueued(record)
        except Exception:  # noqa: BLE001 - logging never raises into the app
            self.handleError(record)
            return
        if self._thread is None or self._closed:
            if self._closed:  # a late record: written at once rather than lost
                self.spill([item])
                self._count_spilled(1)
                return
            self._start()
        queue = self._queue
        if len(queue) >= self.queue_size:
            self._full(item)
            return
        queue.append(item)
        if len(queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def enqueued(self, record: logging.LogRecord) -> Any:
        """What the queue keeps for ``record``; runs on the logging thread.

        The default keeps the record itself, freezing a plain record's message
        as ``QueueHandler`` does (an audit record's event is already final).
        """
        if record.args and not hasattr(record, RECORD_ATTRIBUTE):
            record.msg = record.getMessage()
            record.args = None
        return record

    def _full(self, item: Any) -> None:
        if not self._spilling:
            self._wake.set()
            with self._room:
                self._room.wait_for(
                    lambda: len(self._queue) < self.queue_size, timeout=self.block_timeout
                )
            if len(self._queue) < self.queue_size:
                self._queue.append(item)
                return
            if not self._spilling:
                self._spilling = True
                sink_logger.warning(
                    "%s: queue full (%d records); spilling records to %s",
                    type(self).__name__,
                    self.queue_size,
                    self.spill_target(),
                )
        self.spill([item])
        self._count_spilled(1)

    def _count_spilled(self, count: int) -> None:
        with self._spill_lock:
            self._counters["spilled"] += count
            for series in self._series:
                series.spilled.inc(count)
        if self._series:
            self._report_depth()

    def _count_written(self, count: int) -> None:
        with self._spill_lock:  # one lock for the counters that metrics mirror
            self._counters["written"] += count
            for series in self._series:
                series.written.inc(count)

    # -- the writer thread ------------------------------------------------------

    def _take(self) -> tuple[list[Any], list[_Marker]] | None:
        """The next batch, now in hand; None once ``close()`` has taken the queue."""
        queue = self._queue
        batch: list[Any] = []
        markers: list[_Marker] = []
        with self._hand_lock:
            if self._abandoned:
                return None
            while queue and len(batch) < self.batch_size:
                item = queue.popleft()
                if isinstance(item, _Marker):
                    markers.append(item)
                    break  # everything before the marker is in this batch
                batch.append(item)
            self._in_hand = batch or None
        if self._spilling and len(queue) < self.queue_size // 2:
            self._spilling = False
        with self._room:
            self._room.notify_all()
        return batch, markers

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            closing = self._closing
            if self._series:
                self._report_depth()
            while self._queue:
                if closing and time.monotonic() > self._deadline:
                    return  # close() spills what is left
                taken = self._take()
                if taken is None:
                    return  # close() has spilled the queue
                batch, markers = taken
                if batch and not self._deliver(batch):
                    self._hold(markers)
                    return  # closing and out of time: close() spills the rest
                for marker in markers:
                    marker.done.set()
                if self._series:
                    self._report_depth()
            self.idle()
            if closing:
                return

    def _deliver(self, batch: list[Any]) -> bool:
        """Write one batch, retrying with backoff; False if closing ran out of time."""
        delay = 0.05
        failing = False
        closing_seen = False
        try:
            prepared = self.prepare(batch)
        except Exception:
            sink_logger.exception("%s: cannot prepare a batch; spilling it", type(self).__name__)
            if self._release() is not None:
                self.spill(batch)
                self._count_spilled(len(batch))
            return True
        while True:
            with self._hand_lock:
                if self._in_hand is None:
                    return False  # close() took the batch and spilled it
                self._writing = True
            try:
                self.write_batch(prepared)
            except Exception as exc:  # noqa: BLE001 - any failure is retried, never dropped
                self._counters["failed_batches"] += 1
                if not self.retryable(exc):
                    sink_logger.warning(
                        "%s: batch refused (%s); writing its records one by one",
                        type(self).__name__,
                        type(exc).__name__,
                    )
                    self.write_individually(batch, prepared)
                    self._release()
                    return True
                if not failing or delay >= self.max_retry_delay():
                    sink_logger.warning(
                        "%s: write failed (%s); keeping %d records and retrying",
                        type(self).__name__,
                        type(exc).__name__,
                        len(batch),
                    )
                self._counters["retries"] += 1
                failing = True
                if self._series:  # an outage is when the queue depth matters
                    self._report_depth()
                if self._closing and time.monotonic() > self._deadline:
                    self._give_back(batch)
                    return False
                with self._hand_lock:
                    self._writing = False
                if self._closing and not closing_seen:
                    closing_seen = True
                    delay = 0.05  # close() is waiting: try again soon, and often
                self._back_off(delay)
                delay = min(delay * 2, self.max_retry_delay())
            else:
                self._release()
                self._count_written(len(batch))
                if failing:
                    sink_logger.warning("%s: writing again", type(self).__name__)
                if self._abandoned:  # a write that outlasted close(): what it reopened
                    self.release_resources()
                return True

    def _hold(self, markers: list[_Marker]) -> None:
        """Markers of a batch left to ``close()``: released once it has spilled it."""
        with self._hand_lock:
            if not self._abandoned:
                self._held_markers.extend(markers)
                return
        for marker in markers:  # the batch is spilled already
            marker.done.set()

    def _back_off(self, delay: float) -> None:
        """Pause between two attempts: woken by ``close()``, never past its deadline."""
        if not self._closing:
            self._stop.wait(delay)
            return
        pause = min(delay, self._deadline - time.monotonic())
        if pause > 0:
            time.sleep(pause)

    def _release(self) -> list[Any] | None:
        """Let go of the batch in hand (written or spilled); None if close() took it."""
        with self._hand_lock:
            batch, self._in_hand = self._in_hand, None
            self._writing = False
            return batch

    def _give_back(self, batch: list[Any]) -> None:
        """Closing and out of time: the batch goes back for ``close()`` to spill.

        If ``close()`` has already stopped waiting (this write outlasted it),
        nobody will look at the queue again: the writer spills the batch itself.
        """
        with self._hand_lock:
            self._writing = False
            self._in_hand = None
            if not self._abandoned:
                self._queue.extendleft(reversed(batch))
                return
        sink_logger.error(
            "%s: a write still running at close failed; %d records spilled to %s",
            type(self).__name__,
            len(batch),
            self.spill_target(),
        )
        self.spill(batch)
        self._count_spilled(len(batch))
        self.release_resources()  # what spilling reopened

    # -- hooks for subclasses --------------------------------------------------------

    def prepare(self, items: list[Any]) -> Any:
        """Turn a batch of ``enqueued()`` items into what ``write_batch`` writes (once)."""
        return items

    def write_batch(self, prepared: Any) -> None:
        """Write a prepared batch; raise to have it kept and retried as it is."""
        raise NotImplementedError

    def write_individually(self, items: list[Any], prepared: Any) -> None:
        """After a non-retryable batch failure: the default spills the batch."""
        self.spill(items)
        self._count_spilled(len(items))

    def retryable(self, exc: Exception) -> bool:
        """Whether a failed batch should be retried (the default: always)."""
        return True

    def max_retry_delay(self) -> float:
        """The longest pause between two attempts at one batch."""
        return 5.0

    def idle(self) -> None:
        """Called on the writer thread when the queue is empty."""

    def spill(self, items: list[Any]) -> None:
        """Write ``enqueued()`` items synchronously, somewhere local: the last resort."""
        raise NotImplementedError

    def spill_target(self) -> str:
        """Where ``spill()`` writes, for messages."""
        raise NotImplementedError

    def release_resources(self) -> None:
        """Close files and connections (after the writer has stopped)."""

    # -- flush, close, stats ------------------------------------------------------------

    def flush(self) -> None:
        """Wait (up to ``close_timeout``) until everything queued so far is written."""
        self.drain()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every record queued before this call is written (or spilled).

        Returns False if ``timeout`` (default ``close_timeout``) passed first.
        """
        thread = self._thread
        if thread is None or not thread.is_alive() or threading.current_thread() is thread:
            return not self._queue
        marker = _Marker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(self.close_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Write everything queued, stop the writer, release files and connections.

        Waits up to ``close_timeout`` seconds (a database outage may be ending;
        the writer's backoff wakes now and keeps within that time), and one
        second more for the writer to stop; whatever is still queued then, and
        the writer's batch, is spilled, never dropped.  A write still running
        then is left to finish: its batch is written, or spilled by the writer.
        """
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._deadline = time.monotonic() + self.close_timeout
        self._closing = True
        self._stop.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.close_timeout + 1.0)
        leftover, markers, writing = self._abandon()
        if leftover:
            sink_logger.error(
                "%s: %d records could not be written before close; spilled to %s",
                type(self).__name__,
                len(leftover),
                self.spill_target(),
            )
            self.spill(leftover)
            self._count_spilled(len(leftover))
        for marker in markers:
            marker.done.set()
        if writing:
            sink_logger.error(
                "%s: a write of %d records still running at close; if it fails, "
                "the writer spills them to %s",
                type(self).__name__,
                writing,
                self.spill_target(),
            )
        self.release_resources()
        if self._series:
            self._report_depth()
        _live.discard(self)
        super().close()

    def _abandon(self) -> tuple[list[Any], list[_Marker], int]:
        """Take the queue, and the batch in hand unless a write of it is running.

        Returns the records to spill, the flush markers to release, and the size
        of the batch left to a running write (0 if none).
        """
        leftover: list[Any] = []
        with self._hand_lock:
            self._abandoned = True
            markers, self._held_markers = self._held_markers, []
            in_hand = self._in_hand
            if in_hand is not None and not self._writing:
                leftover.extend(in_hand)  # taken before anything still queued
                self._in_hand = in_hand = None
            queue = self._queue
            while queue:  # popleft: safe against a late emit() appending meanwhile
                item = queue.popleft()
                (markers if isinstance(item, _Marker) else leftover).append(item)
        return leftover, markers, 0 if in_hand is None else len(in_hand)

    def stats(self) -> dict[str, int]:
        """Counters: ``written``, ``spilled``, ``retries``, ``failed_batches``, ``queued``.

        ``written`` and ``spilled`` are what ``jwt_audit_sink_events_total``
        publishes for this handler, when it publishes metrics.
        """
        return {**self._counters, "queued": len(self._queue)}

    # -- metrics ------------------------------------------------------------------------

    def publish_metrics(self, metrics: object = True) -> None:
        """Publish on ``metrics`` (``True``: the default registry, or a ``CollectorRegistry``).

        What ``metrics=`` does at construction.  A handler that publishes by
        its own choice is not also bound to a middleware's registry.
        """
        found = metrics_for(metrics)
        if found is None:
            raise ValueError("metrics: expected True or a prometheus_client CollectorRegistry")
        self._own_metrics = True
        self._bind(found.sink(self.metrics_label()))

    def publish_to_middleware_metrics(self) -> None:
        """Publish on the registries of the middlewares built with ``metrics=`` (contract §11).

        Done by such a middleware for the handlers attached to ``jwt_audit``
        then, and by a handler attached later when it starts; a handler given
        its own ``metrics=`` keeps to that.
        """
        if self._own_metrics:
            return
        label = self.metrics_label()
        for metrics in middleware_metrics():
            self._bind(metrics.sink(label))

    def metrics_label(self) -> str:
        """The ``sink`` label: ``sink_name``, else ``jsonl`` / ``sql``, else the class name."""
        name = type(self).__name__
        return self.sink_name or SINK_NAMES.get(name) or name

    def _bind(self, series: SinkSeries) -> None:
        with self._spill_lock, self._metrics_lock:
            if series in self._series:
                return
            self._series = (*self._series, series)
            # what stats() counted before: from now on both say the same
            if self._counters["written"]:
                series.written.inc(self._counters["written"])
            if self._counters["spilled"]:
                series.spilled.inc(self._counters["spilled"])
            if self._depth_reported:
                series.queue.inc(self._depth_reported)

    def _report_depth(self) -> None:
        """Move the queue-depth gauges by this handler's change since its last report.

        A delta, not a set: handlers sharing a ``sink`` label sum up.
        """
        with self._metrics_lock:
            depth = len(self._queue)
            delta = depth - self._depth_reported
            if delta:
                self._depth_reported = depth
                for series in self._series:
                    series.queue.inc(delta)

    _deadline: float = float("inf")
