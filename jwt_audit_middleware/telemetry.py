"""OpenTelemetry trace correlation (contract §11): the event joins its trace.

With the OpenTelemetry API importable and a span current when an event is
emitted, the event gets ``trace_id`` (32 hex digits) and ``span_id`` (16 hex
digits) of that span, spelled as OpenTelemetry's logging instrumentation
spells ``otelTraceID`` / ``otelSpanID``, and under the same condition (a valid
span context, recording or not); otherwise the fields are absent.  While the
span is recording, a request's ``access`` or ``denial`` event also sets its
``jwt_audit.outcome``, ``jwt_audit.reason`` and ``jwt_audit.subject``
attributes (each only when not null; never the token or its fingerprint), and
a denial (or would-deny) adds the span event ``jwt_audit.denial``.

Whether the API is importable is found out once, when this module is
imported: without it ``CURRENT_SPAN`` is ``None``, the audit path tests one
module global per event and nothing of OpenTelemetry is ever imported.
Which span is current is the instrumentation's business
(``opentelemetry-instrumentation-asgi`` / ``-wsgi`` / ``-django`` /
``-flask``): its middleware must be *outside* ours, so that its server span is
current while we decide and emit.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span

#: The span event added to the request's span on a denial or would-deny.
DENIAL_EVENT = "jwt_audit.denial"
OUTCOME_ATTRIBUTE = "jwt_audit.outcome"
REASON_ATTRIBUTE = "jwt_audit.reason"
SUBJECT_ATTRIBUTE = "jwt_audit.subject"

#: ``opentelemetry.trace.get_current_span``, or ``None`` where the API is not installed.
CURRENT_SPAN: Callable[[], Span] | None = None


def _detect() -> Callable[[], Span] | None:
    # find_spec first: a missing package costs a directory scan, not an ImportError
    # raised from deep inside a half-imported tree
    try:
        if importlib.util.find_spec("opentelemetry") is None:
            return None
        from opentelemetry.trace import get_current_span  # noqa: PLC0415 - optional
    except ImportError:
        return None
    return get_current_span


CURRENT_SPAN = _detect()


def correlate(event: dict[str, Any]) -> Span | None:
    """Add ``trace_id`` and ``span_id`` of the current span to ``event``; the span if recording.

    The ids are added whenever the current span context is valid, as
    OpenTelemetry's logging instrumentation does: a span that was sampled out
    still joins this event to the logs of the services around it, and one
    that has just ended (the ASGI instrumentation ends its span with the last
    body message) still names the span the event belongs to.  Returns the
    span when it is recording (its attributes can still be set), else
    ``None``.  Only call it when ``CURRENT_SPAN`` is set.
    """
    assert CURRENT_SPAN is not None
    span = CURRENT_SPAN()
    context = span.get_span_context()
    if not context.is_valid:
        return None
    event["trace_id"] = format(context.trace_id, "032x")
    event["span_id"] = format(context.span_id, "016x")
    return span if span.is_recording() else None


def annotate(span: Span, event: dict[str, Any]) -> None:
    """Set the request's verdict on its span; a denial also becomes a span event.

    Never raises: tracing is an observer, and an exporter's or a sampler's
    problem must not turn into a failed request.
    """
    outcome = event.get("outcome")
    reason = event.get("reason")
    subject = event.get("subject")
    attributes: dict[str, str] = {}
    if isinstance(outcome, str):
        attributes[OUTCOME_ATTRIBUTE] = outcome
    if isinstance(reason, str):
        attributes[REASON_ATTRIBUTE] = reason
    if isinstance(subject, str):
        attributes[SUBJECT_ATTRIBUTE] = subject
    try:
        span.set_attributes(attributes)
        if reason is not None and event.get("event") == "denial":
            denial = {REASON_ATTRIBUTE: str(reason), OUTCOME_ATTRIBUTE: str(outcome)}
            status = event.get("status")
            if isinstance(status, int):
                denial["http.response.status_code"] = status  # type: ignore[assignment]
            span.add_event(DENIAL_EVENT, denial)
    except Exception:  # noqa: BLE001, S110 - an observer never fails the request
        pass


__all__ = [
    "CURRENT_SPAN",
    "DENIAL_EVENT",
    "OUTCOME_ATTRIBUTE",
    "REASON_ATTRIBUTE",
    "SUBJECT_ATTRIBUTE",
    "annotate",
    "correlate",
]
