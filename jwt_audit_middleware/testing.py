"""Test helpers, for this package's tests and for yours.

- ``capture_events()`` collects audit events as dicts (assert on fields, not
  on formatted text) and every formatted line of the ``jwt_audit`` loggers
  (to prove a token never reaches a log).
- ``SigningKey`` makes a fresh key pair (or HMAC secret) per test run and mints
  tokens with it, so no key of value is ever committed.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .audit import LOGGER_NAME, RECORD_ATTRIBUTE, JSONFormatter

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


@dataclass
class SigningKey:
    """A fresh signing key for one algorithm, and a token factory.

    >>> key = SigningKey.generate("RS256", kid="k1")
    >>> token = key.token(sub="alice", scope="read")
    >>> middleware_options = key.options(audience="api")
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
