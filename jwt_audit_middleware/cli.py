"""The ``jwt-audit`` command line: demo, report, explain, keygen, token, and the rest.

``jwt-audit demo`` runs a small app wrapped in the middleware, in-process,
sends it good and bad requests, prints the audit events as JSON lines, stores
them in an embedded SQLite file and ends with the report: the whole job in one
command.  ``jwt-audit report`` summarises a SQL store or JSON-lines files;
``jwt-audit explain`` says why a token would be allowed or denied (and never
prints or logs the token); ``jwt-audit keygen`` and ``jwt-audit token`` make
test keys and test tokens (``testing``); ``verify-log`` checks a hash-chained
trail (``verify_log``); ``revoke``, ``revocations`` and ``lockouts`` work on the
shared state store (``state_cli``); ``ingest`` loads JSON lines into SQL
(``ingest``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TextIO

from . import state_cli as _state_cli
from . import testing as _testing
from . import verify_log as _verify_log
from .asgi import JWTAuditMiddleware, Scope
from .audit import JSONFormatter
from .errors import ConfigurationError, Denied
from .events import REASONS, clean, fingerprint, rfc3339
from .policy import Gate
from .report import (
    COUNTER_CAPACITY,
    parse_since,
    render,
    report_from_database,
    report_from_sources,
)
from .request import get_claims
from .settings import Settings
from .state import StateStore
from .testing import SigningKey, asgi_request, capture_events


async def _demo_app(scope: Scope, receive: Any, send: Any) -> None:
    """A tiny ASGI app that greets the verified subject."""
    claims = get_claims(scope) or {}
    body = json.dumps({"hello": claims.get("sub", "anonymous"), "path": scope["path"]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


_DEMO_IDS = itertools.count(1)


async def _request(
    app: JWTAuditMiddleware, path: str, authorization: str | None
) -> tuple[int, bytes]:
    headers = {"user-agent": "jwt-audit-demo/1", "x-request-id": f"demo-{next(_DEMO_IDS)}"}
    if authorization is not None:
        headers["authorization"] = authorization
    response = await asgi_request(app, path, headers=headers, client=("203.0.113.7", 50000))
    assert response.status is not None
    return response.status, response.body


def demo(out: TextIO, db: str | None = None, *, abuse: bool = False) -> int:
    """Run the demo; print events, store them in SQLite (``db``) and report to ``out``.

    ``abuse``: the abuse detection demo instead (``jwt-audit demo --abuse``).
    """
    try:
        from .sinks.sql import SQLAuditHandler  # noqa: PLC0415 - SQLAlchemy only when needed
    except ImportError:
        sys.stderr.write(
            "jwt-audit demo stores its events with the SQL sink, which needs SQLAlchemy:\n"
            "    pip install 'jwt-audit-middleware[sql]'\n"
        )
        return 2

    if db is None:
        db = "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="jwt-audit-demo-"), "audit.db")
    store = SQLAuditHandler(db)
    logger = logging.getLogger("jwt_audit")
    logger.addHandler(store)
    try:
        (_demo_abuse if abuse else _demo_requests)(out)
    finally:
        logger.removeHandler(store)
        store.close()
    stats = store.stats()
    out.write(
        f"\nStored {stats['written']} events in {_safe_url(db)}"
        + (f" ({stats['spilled']} spilled to {store.spill_path})" if stats["spilled"] else "")
        + ".\n"
    )
    out.write(f"See them again with: jwt-audit report --db '{_safe_url(db)}' --since all\n\n")
    render(report_from_database(db), out)
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    return make_url(url).render_as_string(hide_password=True)


#: The demo's issuer and audience: the README's quick starts use the same.
_DEMO_ISSUER, _DEMO_AUDIENCE = "https://idp.example.com/", "orders-api"


def _demo_middleware(**options: Any) -> tuple[JWTAuditMiddleware, SigningKey, SigningKey]:
    """The demo app in the middleware, its signing key and a forger's key with the same kid."""
    key = SigningKey.generate("RS256", kid="demo-key")
    forger = SigningKey.generate("RS256", kid="demo-key")
    app = JWTAuditMiddleware(
        _demo_app,
        **key.options(issuer=_DEMO_ISSUER, audience=_DEMO_AUDIENCE),
        exempt_paths=["/health"],
        **options,
    )
    return app, key, forger


def _demo_requests(out: TextIO) -> None:
    """Send the demo's requests; print each event and a summary table."""
    issuer, audience = _DEMO_ISSUER, _DEMO_AUDIENCE
    app, key, forger = _demo_middleware(path_scopes={"/admin": ["admin"]}, log_claims=["scope"])
    good = {"iss": issuer, "aud": audience, "scope": "orders:read"}
    requests = [
        ("valid token", "/orders", "Bearer " + key.token(good, sub="alice")),
        ("expired token", "/orders", "Bearer " + key.token(good, sub="bob", expires_in=-3600)),
        ("forged signature", "/orders", "Bearer " + forger.token(good, sub="mallory")),
        ("no token", "/orders", None),
        ("insufficient scope", "/admin/users", "Bearer " + key.token(good, sub="alice")),
        (
            "wrong audience",
            "/orders",
            "Bearer " + key.token({**good, "aud": "billing"}, sub="carol"),
        ),
        ("exempt path", "/health", None),
    ]
    formatter = JSONFormatter()
    rows = []
    with capture_events() as events:
        for label, path, authorization in requests:
            before = len(events)
            status, _ = asyncio.run(_request(app, path, authorization))
            for record in events.records[before:]:
                out.write(formatter.format(record) + "\n")
            reason = events[-1]["reason"] if len(events) > before else "-"
            rows.append((label, path, status, reason or "-"))
    out.write("\nrequest               path          status  reason\n")
    for label, path, status, reason in rows:
        out.write(f"{label:<21} {path:<13} {status:<7} {reason}\n")
    out.write(
        f"\n{len(requests)} requests, {len(events)} audit events: one each, even on the"
        " exempt /health path.\n"
    )


# -- demo --abuse ----------------------------------------------------------------------

#: The abuse demo's thresholds: small, so that a burst of a few requests crosses them.
_DEMO_ABUSE = {"window_seconds": 60, "denials_per_ip": 5, "lockout_seconds": 60}
_DEMO_ATTACKER, _DEMO_USER = "198.51.100.66", "203.0.113.7"


def _demo_abuse(out: TextIO) -> None:
    """The abuse demo: a burst of forged tokens, its alert, the lockout, a revocation."""
    app, key, forger = _demo_middleware(abuse_detection=_DEMO_ABUSE)
    claims = {"iss": _DEMO_ISSUER, "aud": _DEMO_AUDIENCE}
    alice = key.token(claims, sub="alice", jti="demo-alice-1")
    formatter = JSONFormatter()
    rows: list[tuple[str, str, int, str]] = []
    out.write(
        f"abuse_detection={json.dumps(_DEMO_ABUSE)}; the state in this process's memory"
        " (state_url=redis://... shares it between processes)\n\n"
    )
    with capture_events() as events:

        def send(label: str, ip: str, token: str) -> None:
            before = len(events)
            headers = {"user-agent": "jwt-audit-demo/1", "authorization": "Bearer " + token}
            headers["x-request-id"] = f"demo-{next(_DEMO_IDS)}"
            response = asyncio.run(
                asgi_request(app, "/orders", headers=headers, client=(ip, 50000))
            )
            for record in events.records[before:]:
                out.write(formatter.format(record) + "\n")
            answer = [e for e in events[before:] if e["event"] in ("access", "denial")]
            reason = (answer[-1]["reason"] if answer else None) or "-"
            if "retry-after" in response.headers:
                reason += f" (Retry-After: {response.headers['retry-after']})"
            rows.append((label, ip, response.status or 0, reason))

        send("alice, valid token", _DEMO_USER, alice)
        burst = _DEMO_ABUSE["denials_per_ip"]
        for n in range(1, burst + 1):
            send(f"forged token {n}/{burst}", _DEMO_ATTACKER, forger.token(claims, sub="alice"))
        send("valid token, locked IP", _DEMO_ATTACKER, key.token(claims, sub="bob"))
        send("alice, from her own IP", _DEMO_USER, alice)
        # what `jwt-audit revoke --jti demo-alice-1 --state-url redis://...` does to a shared store
        now = time.time()
        _demo_store(app).revoke_jti("demo-alice-1", now + 300, now)
        out.write("-- revoked jti demo-alice-1 in the state store (alice's token, cached) --\n")
        send("alice, revoked token", _DEMO_USER, alice)
        alerts = [e for e in events if e["event"] == "alert"]
    out.write("\nrequest                  client IP       status  reason\n")
    for label, ip, status, reason in rows:
        out.write(f"{label:<24} {ip:<15} {status:<7} {reason}\n")
    out.write(f"\n{len(alerts)} alerts:\n")
    for alert in alerts:
        about = alert["client_ip"] or alert["subject"] or alert["token_fingerprint"]
        out.write(f"  {alert['reason']:<20} {about}: {alert['detail']}\n")
    out.write(
        f"\n{burst} denials from {_DEMO_ATTACKER} within {_DEMO_ABUSE['window_seconds']} s: one"
        " alert and a lockout; the next request\nfrom that address got 429 before any"
        " signature check, whatever its token.  A revoked token\nis refused even on a"
        " cache hit.\n"
    )


def _demo_store(app: JWTAuditMiddleware) -> StateStore:
    """The state store of the demo's middleware (the list ``jwt-audit revoke`` writes to)."""
    store = app.state
    assert store is not None  # abuse_detection is on
    return store


# -- explain -------------------------------------------------------------------------

_TIME_CLAIMS = ("exp", "nbf", "iat", "auth_time", "updated_at")


def _segment(token: str, index: int) -> dict[str, Any] | None:
    """One decoded JSON segment of the token (0 header, 1 claims), unverified."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[index] + "=" * (-len(parts[index]) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    return value if isinstance(value, dict) else None


def _relative(seconds: float) -> str:
    magnitude = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if magnitude >= size:
            amount = f"{magnitude / size:.1f}".removesuffix(".0") + f" {unit}"
            break
    else:
        amount = f"{magnitude:.0f} s"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def _show(name: str, value: Any, now: float) -> str:
    if (
        name in _TIME_CLAIMS
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and abs(value) < 1e11
    ):
        moment = rfc3339(float(value)).replace(".000Z", "Z")
        return f"{value}  ({moment}, {_relative(value - now)})"
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    except RecursionError:
        return "(nested too deeply to show)"
    return clean(text, 512)  # escapes what a terminal would act on: C0, C1, bidi, U+2028


def _signature_verified(gate: Gate, token: str) -> bool:
    """Whether ``token``'s signature verified, whatever came after (``expired`` ...)."""
    try:
        gate.verifier.verify(token, fingerprint(token))
    except Denied as denied:
        return denied.claims is not None  # claims travel only once the signature holds
    return True


def _explain_settings(args: argparse.Namespace) -> Settings:
    if args.env:
        return Settings.from_env()
    options: dict[str, Any] = {}
    if args.algorithms:
        options["algorithms"] = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if args.secret_file:
        options["secret_file"] = args.secret_file
    if args.public_key_file:
        options["public_key_file"] = args.public_key_file
    if args.jwks_file:
        options["jwks_file"] = args.jwks_file
    if args.issuer:
        options["issuer"] = args.issuer
    if args.audience:
        options["audience"] = args.audience
    if args.leeway is not None:
        options["leeway"] = args.leeway
    if args.token_type:
        options["token_type"] = args.token_type
    return Settings(**options)


def _read_token(argument: str, stdin: TextIO) -> str:
    text = stdin.read() if argument == "-" else argument
    text = text.strip()
    if text[:7].lower() == "bearer ":
        text = text[7:].strip()
    return text


def explain(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    """Print the verdict a token would get, and its decoded header and claims.

    Exit status 0 when it would be allowed, 1 when not.  The token itself, and
    so its signature, is never printed or logged: only its fingerprint.
    """
    settings = _explain_settings(args)
    token = _read_token(args.token, stdin)
    gate = Gate(settings)
    verdict = gate.decide_sync("/", ["Bearer " + token])
    now = time.time()
    header, claims = _segment(token, 0), _segment(token, 1)
    result: dict[str, Any] = {
        "verdict": verdict.outcome,
        "reason": verdict.reason,
        "status": verdict.status or 200,
        "description": REASONS[verdict.reason].description if verdict.reason else None,
        "detail": verdict.detail,
        "token_fingerprint": verdict.fingerprint,
        "signature_verified": _signature_verified(gate, token),
        "header": header,
        "claims": claims,
    }
    if args.json:
        # ASCII only: the claims are the client's, and a terminal acts on C1 and bidi
        # controls (U+009B, U+202E) and breaks lines at U+2028; lone surrogates too
        out.write(json.dumps(result, indent=2, ensure_ascii=True, default=str) + "\n")
        return 0 if verdict.reason is None else 1
    out.write(f"verdict:     {verdict.outcome} ({result['status']})\n")
    if verdict.reason:
        out.write(f"reason:      {verdict.reason}: {result['description']}\n")
    if verdict.detail:
        out.write(f"detail:      {clean(verdict.detail)}\n")
    if verdict.fingerprint:
        out.write(f"fingerprint: {verdict.fingerprint}\n")
    trust = "verified" if result["signature_verified"] else "NOT verified: do not trust the claims"
    out.write(f"signature:   {trust}\n")
    for title, part in (("header", header), ("claims", claims)):
        if part is None:
            out.write(f"\n{title}: (cannot be decoded)\n")
            continue
        out.write(f"\n{title}:\n")
        for name, value in part.items():
            out.write(f"  {clean(str(name), 64)}: {_show(name, value, now)}\n")
    return 0 if verdict.reason is None else 1


# -- report and entry point ----------------------------------------------------------------


def report(args: argparse.Namespace, out: TextIO) -> int:
    """Print the report of a SQL store, JSON-lines files, or both together.

    Bad records are skipped and counted in the report; a bad ``--since`` or
    ``--top``, or a source that cannot be read (a file that is no database or
    holds no audit event, a server that is down), is a ``ValueError`` or
    ``OSError`` that ``main`` turns into one line and exit status 2.
    """
    since = parse_since(args.since)
    if not 1 <= args.top <= COUNTER_CAPACITY:
        raise ValueError(f"--top {args.top}: give a number of rows from 1 to {COUNTER_CAPACITY}")
    if not args.db and not args.file:
        raise ValueError("report: give --db URL, --file PATH, or both")
    result = report_from_sources(args.db, args.file or (), since, args.top, args.table)
    if args.json:
        out.write(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        render(result, out)
    return 0


#: What ``--help`` says of the command and each of its subcommands: plain text.
_DESCRIPTIONS = {
    "jwt-audit": "The command line of jwt_audit_middleware: demo, report, explain; test keys"
    " and tokens (keygen, token); verify-log for a hash-chained trail; revoke, revocations"
    " and lockouts on the shared state store; ingest to load JSON lines into SQL.",
    "verify-log": "Check the hash chains of a trail written with chain=True: report the first"
    " edited, deleted, inserted or reordered record of each stream and the streams never"
    " closed, and print each stream's head hash to keep elsewhere.  Exit status 0 intact,"
    " 1 tampered, 2 usage or read error.",
    "revoke": "Add to the revocation list of the shared state store (state_url): a token by"
    " its jti, or every token of a subject issued before now.",
    "revocations": "List the revocations in force in the shared state store.",
    "lockouts": "List the lockouts in force in the shared state store, or end them.",
    "ingest": "Load JSON-lines audit files (and their rotated siblings) into the SQL table,"
    " each line exactly once: a batch and its file position commit together, so a killed"
    " ingester restarts where it stopped.  --follow keeps going until SIGINT or SIGTERM.",
    "demo": "Run a small app wrapped in the middleware, in-process; send it good and bad"
    " requests; print the audit events as JSON lines, store them in a SQLite file and"
    " end with their report.",
    "report": """\
Summarise stored audit events: totals by outcome and event; refusals by reason,
client IP, subject ((anonymous) when no verified subject) and path; alerts of
abuse detection by reason and key; losses of the shared state store; and a
histogram whose buckets widen with the span (at most about 48 rows).

Sources: --db (a SQLAuditHandler store; a SQLite store's spill file,
<database>.spill.jsonl, is counted with it), --file (JSON-lines files, rotated
files, a server store's spill file), or both at once.  Exit status 2 when a
source cannot be read.""",
    "explain": "Say why a token would be allowed or denied under a configuration, with its"
    " decoded header and claims.  The token is never printed or logged, only its"
    " fingerprint.  Exit status 0 when it would be allowed, 1 when not.",
}


def _version() -> str:
    try:
        return version("jwt-audit-middleware")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree, not installed
        return "(not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jwt-audit", description=_DESCRIPTIONS["jwt-audit"])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo_ = commands.add_parser(
        "demo",
        help="run a small app in-process and show its audit trail",
        description=_DESCRIPTIONS["demo"],
    )
    demo_.add_argument("--db", help="SQLAlchemy URL to store the events (default: a temp SQLite)")
    demo_.add_argument(
        "--abuse",
        action="store_true",
        help="abuse detection: a burst of forged tokens, the alert, the lockout, a revocation",
    )

    report_ = commands.add_parser(
        "report",
        help="summarise stored audit events",
        description=_DESCRIPTIONS["report"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report_.add_argument("--db", help="SQLAlchemy URL of a SQLAuditHandler store")
    report_.add_argument(
        "--file",
        action="append",
        help="a JSON-lines file (repeat for rotated files or a spill file; with --db: added)",
    )
    report_.add_argument("--since", default="24h", help="24h, 30m, 7d, 2w or all (default 24h)")
    report_.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    report_.add_argument("--table", help="table name (default jwt_audit_events)")
    report_.add_argument("--json", action="store_true", help="machine-readable output")

    explain_ = commands.add_parser(
        "explain",
        help="why a token would be allowed or denied (never prints the token)",
        description=_DESCRIPTIONS["explain"],
    )
    explain_.add_argument("token", help="the token, or - to read it from stdin (preferred)")
    explain_.add_argument("--env", action="store_true", help="configuration from JWT_AUDIT_*")
    explain_.add_argument("--algorithms", help="comma-separated allow-list, e.g. RS256,ES256")
    explain_.add_argument("--secret-file", help="HMAC secret file")
    explain_.add_argument("--public-key-file", action="append", help="PEM file (repeatable)")
    explain_.add_argument("--jwks-file", help="JWKS document file")
    explain_.add_argument("--issuer", action="append", help="accepted issuer (repeatable)")
    explain_.add_argument("--audience", action="append", help="accepted audience (repeatable)")
    explain_.add_argument("--leeway", type=float, help="seconds of clock skew allowed")
    explain_.add_argument("--token-type", help="expected JOSE typ, e.g. at+jwt")
    explain_.add_argument("--json", action="store_true", help="machine-readable output")

    keygen_ = commands.add_parser(
        "keygen",
        help=_testing.KEYGEN_HELP,
        description=_testing.KEYGEN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _testing.add_keygen_arguments(keygen_)
    token_ = commands.add_parser(
        "token",
        help=_testing.MINT_HELP,
        description=_testing.MINT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _testing.add_token_arguments(token_)

    verify_ = commands.add_parser(
        "verify-log",
        help="check the hash chains of a trail (chain=True): 0 intact, 1 tampered",
        description=_DESCRIPTIONS["verify-log"],
    )
    _verify_log.add_arguments(verify_)

    _state_cli.add_revoke_arguments(
        commands.add_parser(
            "revoke",
            help="revoke a token (--jti) or a subject's tokens",
            description=_DESCRIPTIONS["revoke"],
        )
    )
    _state_cli.add_revocations_arguments(
        commands.add_parser(
            "revocations",
            help="list the revocations in force",
            description=_DESCRIPTIONS["revocations"],
        )
    )
    _state_cli.add_lockouts_arguments(
        commands.add_parser(
            "lockouts",
            help="list lockouts in force, or end them",
            description=_DESCRIPTIONS["lockouts"],
        )
    )

    ingest_ = commands.add_parser(
        "ingest",
        help="load JSON-lines audit files into the SQL table, each line once (restartable)",
        description=_DESCRIPTIONS["ingest"],
    )
    ingest_.add_argument(
        "--file", action="append", required=True, help="the live JSON-lines file (repeatable)"
    )
    ingest_.add_argument("--db", required=True, help="SQLAlchemy URL of the audit table")
    ingest_.add_argument("--table", help="table name (default jwt_audit_events)")
    ingest_.add_argument(
        "--follow", action="store_true", help="keep loading new lines and rotated files"
    )
    ingest_.add_argument("--batch", type=int, default=5000, help="lines per transaction")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jwt-audit`` console script."""
    parser = _parser()
    args = parser.parse_args(_testing.negative_values(sys.argv[1:] if argv is None else argv))
    logging.getLogger("jwt_audit").propagate = False
    try:
        if args.command == "demo":
            return demo(sys.stdout, args.db, abuse=args.abuse)
        if args.command == "report":
            return report(args, sys.stdout)
        if args.command == "keygen":
            return _testing.keygen_command(args, sys.stdout)
        if args.command == "token":
            return _testing.token_command(args, sys.stdout)
        if args.command in ("revoke", "revocations", "lockouts"):
            return _state_cli.run(args, sys.stdout)
        if args.command == "verify-log":
            return _verify_log.run(args, sys.stdout)
        if args.command == "ingest":
            from . import ingest  # noqa: PLC0415 - SQLAlchemy only when needed

            return ingest.main(args, sys.stdout)
        if args.env and any(
            getattr(args, name) is not None
            for name in ("algorithms", "secret_file", "public_key_file", "jwks_file", "issuer")
        ):
            parser.error("explain: --env takes the whole configuration from the environment")
        if not args.env and not args.algorithms:
            parser.error("explain: give --algorithms and a key option, or --env")
        return explain(args, sys.stdout, sys.stdin)
    except BrokenPipeError:  # `| head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ConfigurationError as exc:
        parser.exit(2, f"jwt-audit: configuration: {exc}\n")
    except ImportError as exc:
        parser.exit(
            2,
            f"jwt-audit: {exc.name or exc} is not installed; the SQL store needs the extra "
            "'sql' (SQLite), 'postgresql' or 'mysql' (e.g. pip install -e '.[postgresql]')\n",
        )
    except (OSError, ValueError) as exc:
        parser.exit(2, f"jwt-audit: {exc}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
