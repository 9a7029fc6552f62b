"""Test helpers, for this package's tests and for yours.

- ``capture_events()`` collects audit events as dicts (assert on fields, not
  on formatted text) and every formatted line of the ``jwt_audit`` loggers
  (to prove a token never reaches a log).
- ``SigningKey`` makes a fresh key pair (or HMAC secret) per test run and mints
  tokens with it, so no key of value is ever committed.  A key can be saved
  (``save_private_pem``, a 0600 file) and loaded again (``from_private_pem``)
  to mint tokens for a running app: ``jwt-audit keygen`` and ``jwt-audit
  token`` do that from the command line (their code is at the end of this
  module, for tests and trials, not production: an identity provider issues
  the tokens a service trusts).  ``token`` writes the token to stdout and
  only there: it is what the user asked for, so it is never logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .audit import LOGGER_NAME, RECORD_ATTRIBUTE, JSONFormatter
from .keys import algorithms_for_key

__all__ = [
    "ASGIResponse",
    "CapturedEvents",
    "SigningKey",
    "asgi_request",
    "capture_events",
    "jwks_document",
]


class CapturedEvents(list[dict[str, Any]]):
    """The events captured so far (a list of dicts), plus every formatted line."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def text(self) -> str:
        """Every captured line, JSON and plain, joined: for leak checks."""
        return "\n".join(self.lines)

    def only(self) -> dict[str, Any]:
        """The single event captured; fails if there is not exactly one."""
        assert len(self) == 1, f"expected exactly one event, got {len(self)}: {list(self)!r}"
        return self[0]


class _CaptureHandler(logging.Handler):
    def __init__(self, sink: CapturedEvents) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink
        self._json = JSONFormatter()
        self._plain = logging.Formatter("%(levelname)s %(name)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, RECORD_ATTRIBUTE, None)
        if isinstance(event, dict):
            self.sink.append(dict(event))
        self.sink.records.append(record)
        self.sink.lines.append(self._json.format(record))
        self.sink.lines.append(self._plain.format(record))


@contextmanager
def capture_events(logger_name: str = LOGGER_NAME) -> Iterator[CapturedEvents]:
    """Collect the audit events (and log lines) emitted inside the block."""
    sink = CapturedEvents()
    handler = _CaptureHandler(sink)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield sink
    finally:
        logger.removeHandler(handler)


_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}


#: The algorithm a private key signs with when none is named.
_DEFAULT_ALGORITHMS = ("RS256", "ES256", "ES384", "ES512", "EdDSA")


@dataclass
class SigningKey:
    """A fresh signing key for one algorithm, and a token factory.

    >>> key = SigningKey.generate("RS256", kid="k1")
    >>> token = key.token(sub="alice", scope="read")
    >>> middleware_options = key.options(audience="api")
    >>> key.save_private_pem("private.pem")  # doctest: +SKIP
    >>> same = SigningKey.from_private_pem("private.pem", kid="k1")  # doctest: +SKIP

    The private key (or HMAC secret) is never part of ``repr()``.
    """

    __test__ = False

    alg: str
    private: Any = field(repr=False)
    public_pem: str | None = field(default=None, repr=False)
    kid: str | None = None

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        """A new random key for ``alg`` (HS*, RS*, PS*, ES256/384/512, EdDSA)."""
        private: Any
        if alg.startswith("HS"):
            return cls(alg, secrets.token_bytes(int(alg[2:]) // 8), None, kid)
        if alg[:2] in ("RS", "PS"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg in _CURVES:
            private = ec.generate_private_key(_CURVES[alg]())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"unsupported test algorithm {alg!r}")
        public_pem = (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        return cls(alg, private, public_pem, kid)

    @classmethod
    def from_private_pem(
        cls,
        source: str | bytes | os.PathLike[str],
        alg: str | None = None,
        kid: str | None = None,
    ) -> SigningKey:
        """A key loaded from a private PEM (PKCS#8 or traditional, unencrypted).

        ``source`` is the PEM itself (``bytes``, or a ``str`` holding
        ``-----BEGIN``) or the path of a file holding it.  ``alg`` defaults to
        what the key type signs with: ``RS256`` for RSA, ``ES256``/``ES384``/
        ``ES512`` by curve, ``EdDSA`` for Ed25519; a named ``alg`` must suit
        the key (``PS256`` with an RSA key).  Errors are ``ValueError`` and
        never quote the file's content.
        """
        if isinstance(source, bytes):
            data = source
        elif isinstance(source, str) and "-----BEGIN" in source:
            data = source.encode()
        else:
            with open(source, "rb") as handle:
                data = handle.read(1024 * 1024)
        try:
            private: Any = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):  # TypeError: an encrypted key, and no password
            raise ValueError(
                "not an unencrypted private key in PEM (e.g. from jwt-audit keygen)"
            ) from None
        usable = algorithms_for_key(private.public_key(), SUPPORTED_TEST_ALGORITHMS)
        if alg is None:
            alg = next((a for a in _DEFAULT_ALGORITHMS if a in usable), None)
        if alg is None or alg not in usable:
            kind = type(private).__name__.replace("PrivateKey", "").lstrip("_")
            raise ValueError(f"this {kind} key cannot sign {alg or 'any supported algorithm'}")
        public_pem = (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        return cls(alg, private, public_pem, kid)

    def save_private_pem(self, path: str | os.PathLike[str]) -> None:
        """Write the private key (PKCS#8 PEM) to a new file only its owner can read (0600).

        An existing file is refused (``FileExistsError``): a key is not
        overwritten by mistake.  HMAC keys have no PEM: write ``secret``.
        """
        if isinstance(self.private, bytes):
            raise ValueError("an HMAC key has no PEM: write .secret to a file of its own")
        _write_private(path, self.private_pem.encode())

    @property
    def private_pem(self) -> str:
        """The private key as PKCS#8 PEM (RSA/EC/EdDSA keys), e.g. to sign tokens elsewhere."""
        assert not isinstance(self.private, bytes), "an HMAC key has no PEM: use .secret"
        return str(
            self.private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
        )

    @property
    def secret(self) -> bytes:
        """The HMAC secret (HS* keys only)."""
        assert isinstance(self.private, bytes), "not an HMAC key"
        return self.private

    def options(self, **extra: Any) -> dict[str, Any]:
        """Middleware options that verify this key's tokens."""
        if isinstance(self.private, bytes):
            return {"algorithms": [self.alg], "secret": self.private, **extra}
        return {"algorithms": [self.alg], "public_key": self.public_pem, **extra}

    def jwk(self) -> dict[str, Any]:
        """The public JWK (with ``kid``, ``alg`` and ``use``)."""
        algorithm = jwt.get_algorithm_by_name(self.alg)
        source = self.private if isinstance(self.private, bytes) else self.private.public_key()
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(source))
        jwk.update({"alg": self.alg, "use": "sig"})
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk

    def token(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, Any] | None = None,
        expires_in: float | None = 300,
        **more: Any,
    ) -> str:
        """A signed token: ``sub``, ``iat``, ``exp`` and ``jti`` by default.

        ``expires_in=None`` leaves ``exp`` out; a negative value makes an
        expired token.  Keyword arguments are further claims.
        """
        now = int(time.time())
        payload: dict[str, Any] = {"sub": "alice", "iat": now, "jti": uuid.uuid4().hex}
        if expires_in is not None:
            payload["exp"] = now + int(expires_in)
        payload.update(claims or {})
        payload.update(more)
        header = dict(headers or {})
        if self.kid is not None:
            header.setdefault("kid", self.kid)
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=header or None)


#: What ``SigningKey.generate`` makes and ``from_private_pem`` loads.
SUPPORTED_TEST_ALGORITHMS = (
    *(f"{family}{bits}" for family in ("HS", "RS", "PS") for bits in (256, 384, 512)),
    *_CURVES,
    "EdDSA",
)


def _write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """``data`` in a new file, 0600 from its creation (never a symbolic link's target)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def jwks_document(*keys: SigningKey) -> dict[str, Any]:
    """A JWKS document publishing the public half of ``keys``."""
    return {"keys": [key.jwk() for key in keys]}


@dataclass
class ASGIResponse:
    """What an ASGI app sent for one request."""

    __test__ = False

    status: int | None
    headers: dict[str, str]
    body: bytes


async def asgi_request(
    app: Any,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
) -> ASGIResponse:
    """Call an ASGI app with one HTTP request, in-process, and collect its answer.

    No server and no HTTP client: a scope as a server would build it, an empty
    body, and the app's messages gathered (header names in lower case).
    """
    raw_headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw_headers,
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    return ASGIResponse(
        status=None if start is None else start["status"],
        headers={
            k.decode("latin-1"): v.decode("latin-1") for k, v in (start or {}).get("headers", [])
        },
        body=b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )


# -- the command line: jwt-audit keygen and jwt-audit token ---------------------------

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
          --scope orders:read --iss https://idp.example.com/ --aud orders-api \\
          --expires-in 15m)
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
        " 'never': a token without exp (default 15m)",
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


def token_command(args: argparse.Namespace, out: TextIO) -> int:
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


def keygen_command(args: argparse.Namespace, out: TextIO) -> int:
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
            raise FileExistsError(
                f"{path} exists: not overwritten (remove it, or name other files with"
                " --private-key-file / --public-key-file)"
            )
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
