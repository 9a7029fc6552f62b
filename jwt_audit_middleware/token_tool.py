"""``jwt-audit keygen`` and ``jwt-audit token``: test keys and test tokens.

For trying a service out and for its tests, not for production: a real
identity provider issues the tokens a service trusts.  ``keygen`` writes a
private key (0600) and the ``public.pem`` the middleware is configured with
(``public_key_file``); ``token`` signs a token with that key (or an HMAC
secret file) and writes it to stdout, and only there: it is what the user
asked for, so it is never logged.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
from collections.abc import Sequence
from typing import Any, TextIO

from .testing import SigningKey, _write_private

#: ``--expires-in``: seconds, or a number and s, m, h, d; negative for an expired token.
_DURATION = re.compile(r"^\s*([+-]?\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: The HMAC secret ``keygen --alg HS*`` writes: this many random bytes, as base64url text.
_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_KEYGEN_ALGORITHMS = ("RS256", "PS256", "ES256", "ES384", "ES512", "EdDSA", *_SECRET_BYTES)

KEYGEN_HELP = "make a test key pair: a private key (0600) and the public.pem to trust"
KEYGEN_DESCRIPTION = """\
Make a test signing key: a private key file (mode 0600, for jwt-audit token)
and the public key file the middleware trusts (public_key_file, or
JWT_AUDIT_PUBLIC_KEY="$(cat public.pem)").  With --alg HS256/384/512, a random
HMAC secret file instead (secret_file), used by both sides.  Existing files
are never overwritten.  For tests and trials: in production the identity
provider holds the keys.
"""
MINT_HELP = "mint a test token with a key from keygen (or an HMAC secret file)"
MINT_DESCRIPTION = """\
Mint a token for testing a service that the middleware protects, signed with
a private key (from jwt-audit keygen) or an HMAC secret file.  The token is
written to stdout and nowhere else; treat it as a password while it is valid.
This is a test tool: in production an identity provider issues the tokens.

example:
  jwt-audit keygen
  TOKEN=$(jwt-audit token --private-key-file private.pem --sub alice \\
          --scope orders:read --aud orders-api --expires-in 15m)
  curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/orders
"""


def add_keygen_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jwt-audit keygen``."""
    parser.add_argument(
        "--alg",
        default="RS256",
        choices=_KEYGEN_ALGORITHMS,
        help="algorithm the key is for (default RS256)",
    )
    parser.add_argument(
        "--private-key-file", default="private.pem", help="where the private key goes"
    )
    parser.add_argument("--public-key-file", default="public.pem", help="where the public key goes")
    parser.add_argument("--secret-file", default="secret.key", help="where an HS* secret goes")


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jwt-audit token``."""
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--private-key-file", help="PEM private key (RSA, EC or Ed25519)")
    key.add_argument("--secret-file", help="HMAC secret file (HS256/384/512)")
    parser.add_argument(
        "--alg", help="signing algorithm (default: RS256, ES256..., EdDSA by key type; HS256)"
    )
    parser.add_argument("--sub", default="alice", help="subject (default alice)")
    parser.add_argument(
        "--scope", action="append", help="scope, e.g. 'orders:read orders:write' (repeatable)"
    )
    parser.add_argument("--aud", action="append", help="audience (repeatable)")
    parser.add_argument("--iss", help="issuer")
    parser.add_argument(
        "--expires-in",
        default="15m",
        help="lifetime: 15m, 2h, 1d, 300 (seconds); -5m mints an expired one;"
        " never leaves out exp (default 15m)",
    )
    parser.add_argument("--kid", help="key id header, as the JWKS names the key")


def negative_values(argv: Sequence[str]) -> list[str]:
    """``--expires-in -5m`` as ``--expires-in=-5m``: argparse takes ``-5m`` for an option."""
    args = list(argv)
    for index, arg in enumerate(args[:-1]):
        if arg == "--expires-in" and args[index + 1].startswith("-"):
            args[index : index + 2] = [f"{arg}={args[index + 1]}"]
            break
    return args


def parse_duration(text: str) -> int | None:
    """``"15m"`` → 900, ``"-5m"`` → -300, ``"never"`` → None; else a one-line ``ValueError``."""
    if text.strip().lower() == "never":
        return None
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"--expires-in {text[:40]!r}: use seconds or a number and s, m, h or d"
            " (15m; -5m for an expired token), or never"
        )
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


def _signing_key(args: argparse.Namespace) -> SigningKey:
    if args.secret_file is not None:
        alg = args.alg or "HS256"
        if alg not in _SECRET_BYTES:
            raise ValueError(f"--alg {alg}: an HMAC secret signs HS256, HS384 or HS512")
        secret = _read(args.secret_file, "--secret-file")
        # as the middleware reads secret_file: one trailing line ending is not the secret's
        secret = secret[:-2] if secret.endswith(b"\r\n") else secret.removesuffix(b"\n")
        if b"-----BEGIN" in secret:
            raise ValueError(
                f"{args.secret_file} holds a PEM key: use --private-key-file, or a random"
                " secret (jwt-audit keygen --alg HS256)"
            )
        if len(secret) < _SECRET_BYTES[alg]:
            raise ValueError(
                f"{args.secret_file}: {alg} needs a secret of at least"
                f" {_SECRET_BYTES[alg]} bytes (RFC 7518 §3.2)"
            )
        return SigningKey(alg, secret, None, args.kid)
    pem = _read(args.private_key_file, "--private-key-file")
    try:
        return SigningKey.from_private_pem(pem, args.alg, args.kid)
    except ValueError as exc:
        raise ValueError(f"{args.private_key_file}: {exc}") from None


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(1024 * 1024)
    except OSError as exc:
        raise ValueError(f"{option}: cannot read {path!r} ({exc.strerror or exc})") from None


def token(args: argparse.Namespace, out: TextIO) -> int:
    """Write one signed test token, and nothing else, to ``out``."""
    expires_in = parse_duration(args.expires_in)
    key = _signing_key(args)
    claims: dict[str, Any] = {"sub": args.sub}
    if args.scope:
        claims["scope"] = " ".join(" ".join(args.scope).split())
    if args.aud:
        claims["aud"] = args.aud[0] if len(args.aud) == 1 else args.aud
    if args.iss:
        claims["iss"] = args.iss
    out.write(key.token(claims, expires_in=expires_in) + "\n")
    return 0


def keygen(args: argparse.Namespace, out: TextIO) -> int:
    """Write a new test key (private 0600 + public PEM, or an HMAC secret) and say where."""
    if args.alg in _SECRET_BYTES:
        secret = secrets.token_urlsafe(_SECRET_BYTES[args.alg])
        _write_private(args.secret_file, secret.encode() + b"\n")
        out.write(
            f"wrote {args.secret_file} ({args.alg} secret, mode 0600): the middleware reads it"
            f" as secret_file, and jwt-audit token --secret-file {args.secret_file} signs"
            " with it\n"
        )
        return 0
    for path in (args.private_key_file, args.public_key_file):
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists: not overwritten (remove it or pick another)")
    key = SigningKey.generate(args.alg)
    key.save_private_pem(args.private_key_file)
    with open(args.public_key_file, "x", encoding="ascii") as handle:
        handle.write(str(key.public_pem))
    out.write(
        f"wrote {args.private_key_file} ({args.alg} private key, mode 0600: for jwt-audit token)"
        f" and {args.public_key_file} (for the middleware: public_key_file, or"
        f' JWT_AUDIT_PUBLIC_KEY="$(cat {args.public_key_file})")\n'
    )
    return 0
