"""The ``jwt-audit`` command line.

``jwt-audit demo`` runs a small app wrapped in the middleware, in-process,
sends it good and bad requests and prints the audit events as JSON lines, then
a summary: the whole job in one command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .asgi import JWTAuditMiddleware, Message, Scope
from .audit import JSONFormatter
from .request import get_claims
from .testing import SigningKey, capture_events


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


async def _request(
    app: JWTAuditMiddleware, path: str, authorization: str | None
) -> tuple[int, bytes]:
    headers = [
        (b"user-agent", b"jwt-audit-demo/1"),
        (b"x-request-id", f"demo-{path.strip('/')}".encode()),
    ]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("203.0.113.7", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def demo(out: TextIO) -> int:
    """Run the demo; print events as JSON lines and a summary to ``out``."""
    issuer, audience = "https://idp.example.test/", "orders-api"
    key = SigningKey.generate("RS256", kid="demo-key")
    forger = SigningKey.generate("RS256", kid="demo-key")
    app = JWTAuditMiddleware(
        _demo_app,
        **key.options(issuer=issuer, audience=audience),
        exempt_paths=["/health"],
        path_scopes={"/admin": ["admin"]},
        log_claims=["scope"],
    )
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
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jwt-audit`` console script."""
    parser = argparse.ArgumentParser(prog="jwt-audit", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run a small app in-process and show its audit trail")
    args = parser.parse_args(argv)
    logging.getLogger("jwt_audit").propagate = False
    assert args.command == "demo"
    return demo(sys.stdout)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
