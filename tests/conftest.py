"""Shared fixtures: test keys made once per run, event capture, leak checks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jwks_server import JWKSServer

from jwt_audit_middleware.testing import CapturedEvents, SigningKey, capture_events, jwks_document

ALGORITHMS = ("HS256", "RS256", "ES256", "EdDSA")


@pytest.fixture(scope="session")
def keys() -> dict[str, SigningKey]:
    """One fresh key per algorithm for the whole run (no key is committed)."""
    made = {alg: SigningKey.generate(alg, kid=f"{alg.lower()}-1") for alg in ALGORITHMS}
    made["PS256"] = SigningKey.generate("PS256", kid="ps256-1")
    made["ES384"] = SigningKey.generate("ES384", kid="es384-1")
    return made


@pytest.fixture(scope="session")
def rsa_key(keys: dict[str, SigningKey]) -> SigningKey:
    return keys["RS256"]


@pytest.fixture(scope="session")
def other_rsa_key() -> SigningKey:
    """A second RS256 key with the same kid: signs forgeries."""
    return SigningKey.generate("RS256", kid="rs256-1")


@pytest.fixture
def server(rsa_key: SigningKey) -> Iterator[JWKSServer]:
    """A JWKS endpoint on 127.0.0.1 serving ``rsa_key``'s public key."""
    jwks = JWKSServer(jwks_document(rsa_key))
    yield jwks
    jwks.close()


@pytest.fixture
def events() -> Iterator[CapturedEvents]:
    with capture_events() as captured:
        yield captured


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_no_secret(text: str | bytes, token: str, *secrets: bytes | str) -> None:
    """Neither the token, nor its signature, nor any secret appears in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    assert token not in text
    signature = token.rsplit(".", 1)[-1]
    if len(signature) >= 16:
        assert signature not in text
    # header.payload is not secret by itself, but the whole signing input must not appear either
    assert token.rsplit(".", 1)[0] not in text
    for secret in secrets:
        value = secret.decode("latin-1") if isinstance(secret, bytes) else secret
        assert value not in text


def jwks_threads() -> list[threading.Thread]:
    """The background refresh threads of ``jwks_url`` key sets still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("jwt_audit-jwks")]


@pytest.fixture
def no_leaked_jwks_threads() -> Iterator[None]:
    """Fail a test that leaves a JWKS refresh thread running."""
    yield
    deadline = time.monotonic() + 3
    while jwks_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not jwks_threads(), "a JWKS refresh thread outlived its test"


@pytest.fixture
def attach() -> Iterator[Callable[[logging.Handler], Any]]:
    """Attach handlers to the ``jwt_audit`` logger for one test; detach and close them after."""
    logger = logging.getLogger("jwt_audit")
    attached: list[logging.Handler] = []

    def add(handler: logging.Handler) -> Any:
        logger.addHandler(handler)
        attached.append(handler)
        return handler

    yield add
    for handler in attached:
        logger.removeHandler(handler)
        handler.close()
