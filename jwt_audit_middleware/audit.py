"""Audit events through stdlib logging.

``AuditLogger`` is a ``logging.LoggerAdapter`` on the logger ``jwt_audit``.
Each event is a dict under one record attribute, ``record.jwt_audit``, so it
collides with no other library's ``extra`` and no claim can clobber a
``LogRecord`` field; the message is a short human line built lazily from
already-cleaned fields.  ``JSONFormatter`` renders a record as one JSON line.
Formatting and I/O happen in handlers, never in the event builder.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import operator
import os
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .events import (
    ACCESS,
    CLOSED,
    DENIAL,
    DENIED,
    DISCONNECT,
    WOULD_DENY,
    app_event,
    clean,
    rfc3339,
)
from .model import RequestInfo, Verdict
from .telemetry import CURRENT_SPAN as _CURRENT_SPAN
from .telemetry import annotate, correlate

if TYPE_CHECKING:
    from .metrics import Metrics

LOGGER_NAME = "jwt_audit"
RECORD_ATTRIBUTE = "jwt_audit"

_logger = logging.getLogger(LOGGER_NAME)
if _logger.level == logging.NOTSET:
    # Access events are INFO: without this a handler added to "jwt_audit"
    # alone would inherit the root's WARNING and silently drop them.
    _logger.setLevel(logging.INFO)
_logger.addHandler(logging.NullHandler())

_MESSAGE = "%s %s %s %s status=%s reason=%s subject=%s request_id=%s"
_message_args = operator.itemgetter(
    "event", "outcome", "method", "path", "status", "reason", "subject", "request_id"
)

# ``relativeCreated`` is measured from logging's own start; read its offset once.
_REFERENCE = logging.LogRecord("", 0, "", 0, "", None, None)
_RELATIVE_OFFSET_MS = _REFERENCE.created * 1000 - _REFERENCE.relativeCreated
_new_record = logging.LogRecord.__new__


def _record_template(name: str, level: int) -> dict[str, Any]:
    return {
        "name": name,
        "levelno": level,
        "levelname": logging.getLevelName(level),
        "pathname": __file__,
        "filename": os.path.basename(__file__),
        "module": "audit",
        "lineno": 0,
        "funcName": "emit",
        "exc_info": None,
        "exc_text": None,
        "stack_info": None,
        "taskName": None,
        "msg": _MESSAGE,
        "thread": None,  # these four are filled per record unless logging is told not to
        "threadName": None,
        "process": None,
        "processName": None,
        # set on every record; present here so that setting them never grows the dict
        "args": None,
        "created": None,
        "msecs": None,
        "relativeCreated": None,
        RECORD_ATTRIBUTE: None,
    }


def make_record(
    logger: logging.Logger,
    level: int,
    args: tuple[Any, ...],
    event: dict[str, Any],
    extra: Mapping[str, Any] | None = None,
    *,
    now: float | None = None,
) -> logging.LogRecord:
    """The ``LogRecord`` of an audit event, without ``Logger.log``'s stack walk.

    ``event`` becomes ``record.jwt_audit``; ``extra`` (the adapter's) adds
    attributes beside it.  With the default record factory the record's
    attributes are one dict copied from a per-level template (a genuine
    ``LogRecord``, a fraction of the cost of its ``__init__``); with a custom
    factory (OpenTelemetry installs one to add trace ids) the factory builds
    it, so whatever it adds survives.
    """
    if logging.getLogRecordFactory() is not logging.LogRecord:
        return logger.makeRecord(
            logger.name,
            level,
            __file__,
            0,
            _MESSAGE,
            args,
            None,
            "emit",
            {**(extra or {}), RECORD_ATTRIBUTE: event},
        )
    if now is None:
        now = time.time()
    template = _TEMPLATES.get((logger.name, level)) or _template(logger.name, level)
    fields = template.copy()  # copy-and-set: cheaper than a ``{**template, ...}`` display
    if extra:
        fields.update(extra)
    fields["args"] = args
    fields["created"] = now
    fields["msecs"] = (now * 1000) % 1000
    fields["relativeCreated"] = now * 1000 - _RELATIVE_OFFSET_MS
    fields[RECORD_ATTRIBUTE] = event
    if logging.logThreads:
        try:
            fields["thread"], fields["threadName"] = _this_thread.ident_and_name
        except AttributeError:
            _this_thread.ident_and_name = pair = (
                threading.get_ident(),
                threading.current_thread().name,
            )
            fields["thread"], fields["threadName"] = pair
    if logging.logProcesses:
        fields["process"] = _PROCESS[0]
    if logging.logMultiprocessing:
        fields["processName"] = _PROCESS[1]
    record = _new_record(logging.LogRecord)
    record.__dict__ = fields
    return record


#: What an adapter's ``extra`` may not set: the record's own attributes and the event.
_RESERVED = frozenset((*_record_template("", 0), "message", "asctime"))

#: Per thread, its id and name, read once: a thread renamed after its first
#: audit event keeps its first name in later records.
_this_thread = threading.local()
_TEMPLATES: dict[tuple[str, int], dict[str, Any]] = {}
_PROCESS: list[Any] = [0, "MainProcess"]  # pid and process name, renewed in forked children


def _template(name: str, level: int) -> dict[str, Any]:
    template = _TEMPLATES[(name, level)] = _record_template(name, level)
    return template


def _remember_process() -> None:
    _PROCESS[:] = [os.getpid(), _process_name()]


def _process_name() -> str:
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return "MainProcess"
    try:
        return str(multiprocessing.current_process().name)
    except Exception:  # noqa: BLE001 - the stdlib guards this the same way
        return "MainProcess"


class AuditLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The adapter every audit event goes through (logger ``jwt_audit``).

    Unlike the stdlib default before Python 3.13, a call's own ``extra``
    is merged with the adapter's instead of being dropped.

    With the OpenTelemetry API installed and a recording span current, every
    event gets that span's ``trace_id`` and ``span_id``, and a request's event
    sets its verdict on the span (``telemetry.py``).  After ``publish(metrics)``
    each request's verdict and each ``alert`` event are counted.
    """

    #: ``Metrics.requests`` once ``publish()``ed: ``(outcome, reason)`` -> counter child
    _request_counters: dict[tuple[str, str | None], Any] | None = None
    _metrics: Metrics | None = None

    def __init__(
        self,
        logger: logging.Logger | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        extra = dict(extra or {})
        clash = _RESERVED.intersection(extra)
        if clash:  # Logger.makeRecord refuses these too, but only when a record is made
            raise ValueError(f"extra cannot replace LogRecord attributes: {sorted(clash)}")
        super().__init__(logger or _logger, extra)
        # instance attributes, not only the class defaults: a read of one the instance
        # holds is the specialised fast path, and request_event() reads this per request
        self._request_counters = None
        self._metrics = None

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        own = kwargs.get("extra")
        kwargs["extra"] = {**self.extra, **own} if own else self.extra  # type: ignore[dict-item]
        return msg, kwargs

    def publish(self, metrics: Metrics) -> None:
        """Count every request's verdict and every ``alert`` event on ``metrics``."""
        self._metrics = metrics
        self._request_counters = metrics.requests

    def emit(self, event: dict[str, Any], level: int = logging.INFO) -> None:
        """Emit one event dict (``record.jwt_audit``) with a one-line message."""
        if _CURRENT_SPAN is not None:
            correlate(event)
        metrics = self._metrics
        if metrics is not None and event.get("event") == "alert":
            metrics.alert(str(event.get("reason")))
        self._emit(event, level, None)

    def _emit(self, event: dict[str, Any], level: int, now: float | None) -> None:
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        try:
            args = _message_args(event)
        except KeyError:  # an event of the app's own making may leave fields out
            args = (
                event.get("event"),
                event.get("outcome"),
                event.get("method", "-"),
                event.get("path", "-"),
                event.get("status"),
                event.get("reason"),
                event.get("subject"),
                event.get("request_id"),
            )
        record = make_record(logger, level, args, event, self.extra, now=now)
        if logger.filters:
            logger.handle(record)
        else:  # what handle() does after its filters (isEnabledFor checked ``disabled``)
            logger.callHandlers(record)

    def request_event(
        self,
        verdict: Verdict,
        info: RequestInfo,
        status: int | None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Build and emit the ``access`` or ``denial`` event of one request.

        ``status`` is what was sent; a would-deny (report-only) reports the
        status the denial would have sent instead, whatever the app answered.
        """
        if verdict.outcome == WOULD_DENY:
            status = verdict.status
        base = verdict.event_base
        event = base.copy()
        stamp = time.time() if now is None else now
        event["time"] = rfc3339(stamp)
        event["request_id"] = info.request_id
        event["method"] = info.method
        event["path"] = info.path
        event["protocol"] = info.protocol
        event["status"] = status
        # whole microseconds: round(x, 3) formats through a string, this does not
        event["duration_ms"] = round((time.perf_counter() - info.started) * 1_000_000) / 1000
        event["client_ip"] = info.client_ip
        event["user_agent"] = info.user_agent
        event["audience"] = [*base["audience"]]  # each event owns its lists and claims
        event["scopes"] = [*base["scopes"]]
        claims = base["claims"]
        event["claims"] = {**claims} if claims else {}
        reason = verdict.reason
        counters = self._request_counters
        if counters is not None:
            counter = counters[event["outcome"], reason]
            if counter is not None:
                counter.inc()
        if _CURRENT_SPAN is not None:
            span = correlate(event)
            if span is not None and event["event"] in _REQUEST_EVENTS:
                annotate(span, event)
        if reason is None:
            level = logging.INFO
        elif reason == "internal_error":
            level = logging.ERROR
        else:
            level = logging.WARNING if verdict.outcome == DENIED else logging.INFO
        self._emit(event, level, stamp)
        return event

    def disconnect_event(self, verdict: Verdict, info: RequestInfo, detail: str) -> dict[str, Any]:
        """Emit (INFO) the ``disconnect`` event of a websocket: its lifetime and who closed it.

        The fields of the connection's ``access`` event, with ``event``
        ``disconnect``, ``outcome`` ``closed``, ``duration_ms`` since the
        handshake began and ``detail`` naming the closer and the close code.
        """
        base = {**verdict.event_base, "event": DISCONNECT, "outcome": CLOSED, "reason": None}
        base["detail"] = clean(detail, 128)
        return self.request_event(replace(verdict, event_base=base), info, None)

    def build_event(self, event: str, outcome: str, **fields: Any) -> dict[str, Any]:
        """``events.app_event()``: an event for something an app did rather than a request."""
        return app_event(event, outcome, **fields)

    def login_succeeded(
        self,
        user: str | None,
        *,
        client_ip: str | None = None,
        request_id: str | None = None,
        user_agent: str | None = None,
        method: str | None = None,
        path: str | None = None,
        detail: str | None = None,
    ) -> dict[str, Any]:
        """Emit (INFO) and return a ``login_succeeded`` event for ``user`` (a name or id).

        Everything but ``user`` is keyword-only, so that nothing a login form
        holds (its password) lands in a field by position.  ``client_ip``
        must be an IP address.
        """
        event = self.build_event(
            "login_succeeded",
            "allowed",
            subject=_login_user(user),
            client_ip=_login_ip(client_ip),
            request_id=request_id,
            user_agent=user_agent,
            method=method,
            path=path,
            detail=detail,
        )
        self.emit(event, logging.INFO)
        return event

    def login_failed(
        self,
        user: str | None,
        *,
        reason: str,
        client_ip: str | None = None,
        request_id: str | None = None,
        user_agent: str | None = None,
        method: str | None = None,
        path: str | None = None,
        detail: str | None = None,
    ) -> dict[str, Any]:
        """Emit (WARNING) and return a ``login_failed`` event.

        ``user`` is the name or id that was tried (client input: it is cleaned
        and capped).  ``reason`` is one of ``LOGIN_FAILURE_REASONS``
        (``"bad_password"``, ``"unknown_user"``, ``"locked"`` ...): a fixed
        vocabulary, because a free-text reason is where a password ends up.
        """
        if reason not in LOGIN_FAILURE_REASONS:
            # the value is not echoed: it may be the very secret this guards against
            raise ValueError(f"reason must be one of {sorted(LOGIN_FAILURE_REASONS)}")
        event = self.build_event(
            "login_failed",
            "denied",
            reason=reason,
            subject=_login_user(user),
            client_ip=_login_ip(client_ip),
            request_id=request_id,
            user_agent=user_agent,
            method=method,
            path=path,
            detail=detail,
        )
        self.emit(event, logging.WARNING)
        return event


_REQUEST_EVENTS = frozenset((ACCESS, DENIAL))

#: The reasons ``AuditLogger.login_failed`` accepts.
LOGIN_FAILURE_REASONS = frozenset(
    (
        "bad_password",
        "bad_credentials",
        "unknown_user",
        "locked",
        "disabled",
        "expired_password",
        "mfa_failed",
        "rate_limited",
        "bad_request",
        "other",
    )
)


def _login_user(user: object) -> str | None:
    if user is not None and not isinstance(user, str):  # a form dict would be logged whole
        raise TypeError(f"user must be a str (a name or id), not {type(user).__name__}")
    return user


def _login_ip(client_ip: object) -> str | None:
    if client_ip is None:
        return None
    try:
        address = ipaddress.ip_address(client_ip)  # type: ignore[arg-type]
    except ValueError:
        # the value is not echoed: a password passed by mistake must not reach the log
        raise ValueError("client_ip must be an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # "::ffff:192.0.2.1" from a dual-stack socket
    return str(address)


class JSONFormatter(logging.Formatter):
    """Renders a record as one JSON object on one line.

    An audit record becomes its event plus ``level`` and ``logger``; any other
    record becomes ``time``, ``level``, ``logger`` and ``message``.  Control
    characters are escaped by JSON, so a line can never be split.
    """

    def __init__(self, *, ensure_ascii: bool = False) -> None:
        super().__init__()
        from ._jsonfast import dumps  # noqa: PLC0415 - the formatter's own concern

        # ``dumps`` is the stdlib encoder's exact text, computed by orjson when installed
        self._dumps = (
            json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str).encode
            if ensure_ascii
            else dumps
        )

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, RECORD_ATTRIBUTE, None)
        if isinstance(event, dict):
            data = {**event, "level": record.levelname, "logger": record.name}
        else:
            data = {
                "time": rfc3339(record.created),
                "level": record.levelname,
                "logger": record.name,
                "message": clean(record.getMessage(), 4096),
            }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        line = self._dumps(data)
        # JSON leaves these raw when ensure_ascii is off, yet splitlines() and
        # many log tools break lines on them.
        if "\u2028" in line or "\u2029" in line or "\x85" in line:
            line = line.translate(_LINE_BREAKS)
        return line


_LINE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


_remember_process()
os.register_at_fork(after_in_child=_remember_process)
