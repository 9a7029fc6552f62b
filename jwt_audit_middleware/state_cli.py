"""``jwt-audit revoke``, ``revocations`` and ``lockouts``: the shared state from a shell.

Each command works on the Redis store that ``state_url`` names
(``--state-url``, default ``$JWT_AUDIT_STATE_URL``), the one every process of
the app shares, so a revocation made here is seen by the next request of every
process.  A store in process memory cannot be reached from another process:
without a URL the commands say so.  No store reachable, or a bad URL: one line
on stderr and exit status 2; a password in the URL is never printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from .events import clean, rfc3339

if TYPE_CHECKING:
    from .state_redis import RedisStore

#: Environment variable giving the default ``--state-url``.
STATE_URL_ENV = "JWT_AUDIT_STATE_URL"
#: Deadline of each command's calls, seconds (a person waits; a request never does).
CLI_TIMEOUT = 3.0
#: Default ``--until`` of a jti revocation: longer than the access tokens of most issuers.
JTI_DEFAULT = "24h"
#: Default ``--until`` of a subject revocation (see ``revoke --help``).
SUBJECT_DEFAULT = "30d"
USAGE = 2

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SCHEMES = ("redis://", "rediss://", "unix://")


class StateCLIError(Exception):
    """A one-line reason to stop with exit status 2."""


def add_state_url(parser: argparse.ArgumentParser) -> None:
    """``--state-url`` and ``--key-prefix``, common to the three commands."""
    parser.add_argument(
        "--state-url",
        metavar="URL",
        default=os.environ.get(STATE_URL_ENV),
        help=f"redis://host:port/db of the app's state_url (default ${STATE_URL_ENV})",
    )
    parser.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        default="jwt_audit:",
        help="Redis key prefix (default jwt_audit:)",
    )


def add_revoke_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jwt-audit revoke``."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--jti", help="deny the one token with this jti claim")
    what.add_argument("--subject", help="deny every token of this subject issued before now")
    parser.add_argument(
        "--until",
        metavar="TIME",
        help=(
            "when the revocation ends: a time (ISO 8601, e.g. 2027-01-31T12:00:00Z; no zone"
            " means UTC) or a duration from now (90s, 30m, 24h, 7d, 2w); for --subject also"
            f" 'never'. Default for --jti: {JTI_DEFAULT} (give the token's own exp if it"
            f" lives longer). Default for --subject: {SUBJECT_DEFAULT}: the revocation only"
            " matters while a token issued before it can still be valid, so it need outlive"
            " the longest token lifetime, not more; the list then cleans itself up"
        ),
    )
    add_state_url(parser)


def add_revocations_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jwt-audit revocations``."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_state_url(parser)


def add_lockouts_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jwt-audit lockouts``."""
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--clear", metavar="KEY", help="end one lockout: ip:203.0.113.7 or subject:alice"
    )
    action.add_argument("--clear-all", action="store_true", help="end every lockout")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_state_url(parser)


def run(args: argparse.Namespace, out: TextIO, err: TextIO | None = None) -> int:
    """Run ``revoke``, ``revocations`` or ``lockouts``; 0 done, 1 nothing to clear, 2 error."""
    err = sys.stderr if err is None else err
    try:
        return _run(args, out)
    except StateCLIError as exc:
        err.write(f"jwt-audit: {exc}\n")
        return USAGE


def _run(args: argparse.Namespace, out: TextIO) -> int:
    until_text = getattr(args, "until", None)
    now = time.time()
    until = None
    if args.command == "revoke":  # a bad --until is said before any connection
        default = JTI_DEFAULT if args.jti is not None else SUBJECT_DEFAULT
        until = parse_until(until_text or default, now, allow_never=args.subject is not None)
    store = _open(args)
    try:
        if args.command == "revoke":
            return _call(store, lambda: revoke(store, args, now, until, out))
        if args.command == "revocations":
            return _call(store, lambda: list_revocations(store, args.json, now, out))
        return _call(store, lambda: lockouts(store, args, now, out))
    finally:
        store.close()


def parse_until(text: str, now: float, *, allow_never: bool = False) -> float | None:
    """``--until``: an ISO 8601 time or a duration from ``now``; ``None`` for ``never``."""
    if allow_never and text.strip().lower() == "never":
        return None
    match = _DURATION.match(text)
    if match is not None:
        until = now + float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    else:
        iso = text.strip()
        if iso[-1:] in ("Z", "z"):
            iso = iso[:-1] + "+00:00"
        try:
            moment = datetime.datetime.fromisoformat(iso)
        except ValueError:
            raise StateCLIError(
                f"--until {clean(text, 64)!r}: give a time (ISO 8601, e.g. 2027-01-31T12:00:00Z)"
                " or a duration (90s, 30m, 24h, 7d, 2w)" + (" or never" if allow_never else "")
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        until = moment.timestamp()
    if until <= now:
        raise StateCLIError(f"--until {clean(text, 64)!r} is not in the future")
    return until


def _open(args: argparse.Namespace) -> RedisStore:
    url = args.state_url
    if not url:
        raise StateCLIError(
            f"no state store: give --state-url redis://host:port/db or set {STATE_URL_ENV}"
            " (the app's state_url; a store in process memory cannot be reached from here)"
        )
    if not url.startswith(_SCHEMES):
        raise StateCLIError("--state-url: expected redis://host:port/db, rediss://... or unix://")
    try:
        from .state_redis import RedisStore  # noqa: PLC0415 - optional extra
    except ImportError:
        raise StateCLIError(
            "redis is not installed: pip install 'jwt-audit-middleware[redis]'"
        ) from None
    try:
        return RedisStore(url, timeout=CLI_TIMEOUT, prefix=args.key_prefix)
    except ValueError:  # redis-py's URL parsing; its text may quote the URL
        raise StateCLIError("--state-url: not a valid Redis URL") from None


def _call(store: RedisStore, action: Any) -> int:
    import redis  # noqa: PLC0415 - present once a RedisStore exists

    try:
        return int(action())
    except redis.AuthenticationError:
        raise StateCLIError(f"state store at {store.address}: authentication failed") from None
    except redis.TimeoutError:
        raise StateCLIError(
            f"state store at {store.address} did not answer within {CLI_TIMEOUT:g} s"
        ) from None
    except (redis.ConnectionError, OSError) as exc:
        raise StateCLIError(
            f"state store at {store.address} is unreachable ({_why(exc)})"
        ) from None
    except redis.RedisError as exc:
        raise StateCLIError(f"state store at {store.address}: {type(exc).__name__}") from None


def _why(exc: BaseException) -> str:
    """A short cause without the library's text (which may quote the URL)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return str(cause.strerror).lower()
        cause = cause.__cause__ or cause.__context__
    text = str(exc).lower()
    for known in ("connection refused", "name or service not known", "no such file"):
        if known in text:
            return known
    return "connection error"


def _when(moment: float | None) -> str:
    return "never" if moment is None else rfc3339(moment)


def revoke(
    store: RedisStore, args: argparse.Namespace, now: float, until: float | None, out: TextIO
) -> int:
    """``jwt-audit revoke``."""
    if args.jti is not None:
        assert until is not None
        store.revoke_jti(args.jti, until, now)
        out.write(f"revoked jti {clean(args.jti)} until {_when(until)}\n")
    else:
        store.revoke_subject(args.subject, now, until)
        out.write(
            f"revoked subject {clean(args.subject)}: tokens issued before {_when(now)}"
            f" are denied until {_when(until)}\n"
        )
    return 0


def list_revocations(store: RedisStore, as_json: bool, now: float, out: TextIO) -> int:
    """``jwt-audit revocations``."""
    found = sorted(store.revocations(now), key=lambda r: (r.kind, r.revoked_at, r.value))
    if as_json:
        rows = [
            {
                "kind": r.kind,
                "value": r.value,
                "revoked_at": rfc3339(r.revoked_at),
                "until": None if r.until is None else rfc3339(r.until),
            }
            for r in found
        ]
        out.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return 0
    if not found:
        out.write("no revocations in force\n")
        return 0
    _table(
        out,
        ("KIND", "VALUE", "REVOKED AT", "UNTIL"),
        [(r.kind, clean(r.value, 80), _when(r.revoked_at), _when(r.until)) for r in found],
    )
    return 0


def lockouts(store: RedisStore, args: argparse.Namespace, now: float, out: TextIO) -> int:
    """``jwt-audit lockouts``: list, ``--clear KEY`` or ``--clear-all``."""
    if args.clear is not None:
        kind, sep, value = args.clear.partition(":")
        if not sep or kind not in ("ip", "subject") or not value:
            raise StateCLIError(
                f"--clear {clean(args.clear, 64)!r}: give ip:ADDRESS or subject:NAME"
            )
        if store.clear_lockout(kind, value):
            out.write(f"cleared the lockout of {kind} {clean(value)}\n")
            return 0
        out.write(f"no lockout of {kind} {clean(value)}\n")
        return 1
    if args.clear_all:
        out.write(f"cleared {store.clear_lockouts()} lockout(s)\n")
        return 0
    found = sorted(store.lockouts(now), key=lambda lock: (lock.kind, lock.until, lock.value))
    if args.json:
        rows = [
            {"key": f"{lock.kind}:{lock.value}", "kind": lock.kind, "value": lock.value,
             "until": rfc3339(lock.until), "seconds_left": max(0, round(lock.until - now))}
            for lock in found
        ]  # fmt: skip
        out.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return 0
    if not found:
        out.write("no lockouts in force\n")
        return 0
    _table(
        out,
        ("KEY", "UNTIL", "LEFT"),
        [
            (clean(f"{lock.kind}:{lock.value}", 80), _when(lock.until), f"{lock.until - now:.0f} s")
            for lock in found
        ],
    )
    return 0


def _table(out: TextIO, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")
