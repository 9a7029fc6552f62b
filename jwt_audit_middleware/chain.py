"""The hash chain of a tamper-evident trail: what is hashed, how, and with which key.

A handler built with ``chain=True`` is one *stream*: a random ``chain_id``,
records numbered by ``seq`` from 1, each holding the ``hash`` of the one
before it (``prev_hash``) and its own ``hash`` over its stored bytes.  An edit,
a deletion, an insertion or a swap anywhere in a stream breaks a link that
``jwt-audit verify-log`` finds; a clean close appends a closing record
(``event="chain_closed"``), so a cut tail shows as a stream that never closed.

What is hashed (the *body*), so that checking costs no JSON parsing:

- JSON lines: the stored line itself, up to and including the ``prev_hash``
  value.  The chain fields are spliced into the line the formatter already
  made (no second encoding), as its last keys, in a fixed form::

      {...event...,"chain_id":"<32 hex>","seq":7,"prev_hash":"<64 hex>","hash":"<64 hex>"}

  ``hash`` is the digest of the line's UTF-8 bytes before ``,"hash":``.
- SQL rows: a database may re-encode stored JSON (PostgreSQL's JSONB reorders
  keys and respaces), so the body is rebuilt from the row, deterministically:
  ``canonical_row()`` of the chain fields, ``event_id``, ``level``, ``time``
  and the event in ``canonical_json()`` form (sorted keys, compact).  A chained
  handler stores ``data`` in that form already, so writing encodes once.  The
  typed columns (``outcome``, ``subject``, ...) are copies of the event's
  fields; the verifier checks them against the hashed event.

The digest is SHA-256, or HMAC-SHA256 with a ``chain_key``.  Without a key
anyone who can edit the trail can also recompute every hash after the edit:
the chain then proves only what matches a head hash kept elsewhere.  With a
key, only its holders can.  The first record's ``prev_hash`` is the stream's
*genesis*, the digest of its ``chain_id``, so a wrong key is told apart from an
edit.  The key is held by ``ChainKey``, which never shows it.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from typing import Any, Final

from .errors import ConfigurationError

__all__ = [
    "CLOSING_EVENT",
    "Chain",
    "ChainKey",
    "canonical_json",
    "canonical_row",
    "load_key",
]

#: ``event`` of the record a clean close appends to a stream.
CLOSING_EVENT: Final = "chain_closed"
#: The shortest chain key accepted (RFC 2104: at least the digest's length).
MIN_KEY_BYTES: Final = 32
_GENESIS: Final = b"jwt-audit chain "
_hexlify = binascii.hexlify
_sha256 = hashlib.sha256
_BLOCK = 64  # SHA-256's block size, for HMAC's pads
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_EMPTY_SHA256 = _sha256()


class ChainKey:
    """An HMAC key for the chain: used, never shown (``repr`` hides it).

    HMAC-SHA256 (RFC 2104) from two SHA-256 states keyed once, copied per
    record: ``hmac.digest`` sets up the key on every call, which costs more
    than hashing a record (OpenSSL 3.0 fetches the algorithm each time).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        if len(secret) > _BLOCK:
            secret = _sha256(secret).digest()
        padded = secret.ljust(_BLOCK, b"\0")
        self._inner = _sha256(padded.translate(_IPAD))
        self._outer = _sha256(padded.translate(_OPAD))

    def digest(self, body: bytes | memoryview) -> bytes:
        """HMAC-SHA256 of ``body``, as 64 hex digits (bytes)."""
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return _hexlify(outer.digest())

    def hexdigest(self, body: bytes) -> str:
        """HMAC-SHA256 of ``body``, as 64 hex digits (str)."""
        inner = self._inner.copy()
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:
        return "ChainKey(<hidden>)"

    def __reduce__(self) -> Any:  # never pickled along with a handler
        raise TypeError("a chain key is not picklable")


def load_key(
    chain_key: bytes | str | None = None, chain_key_file: str | os.PathLike[str] | None = None
) -> ChainKey | None:
    """The key from ``chain_key`` or ``chain_key_file`` (at most one), or None.

    A file's trailing newline (and other trailing whitespace) is not part of
    the key.  A key shorter than ``MIN_KEY_BYTES`` is refused.  Errors name the
    option, never the key.
    """
    if chain_key is not None and chain_key_file is not None:
        raise ConfigurationError("chain_key", "give chain_key or chain_key_file, not both")
    if chain_key_file is not None:
        option = "chain_key_file"
        path = os.fspath(chain_key_file)
        try:
            with open(path, "rb") as handle:
                secret = handle.read().rstrip()
        except OSError as exc:
            raise ConfigurationError(
                option, f"cannot read {path} ({exc.strerror or type(exc).__name__})"
            ) from None
    elif chain_key is not None:
        option = "chain_key"
        secret = chain_key.encode("utf-8") if isinstance(chain_key, str) else bytes(chain_key)
    else:
        return None
    if len(secret) < MIN_KEY_BYTES:
        raise ConfigurationError(
            option, f"the chain key must be at least {MIN_KEY_BYTES} bytes (got {len(secret)})"
        )
    return ChainKey(secret)


def sha256_hex(body: bytes | memoryview) -> bytes:
    """SHA-256 of ``body``, as 64 hex digits (bytes): the digest without a key."""
    state = _EMPTY_SHA256.copy()  # a copy skips OpenSSL 3.0's per-call algorithm fetch
    state.update(body)
    return _hexlify(state.digest())


def sha256_hexdigest(body: bytes) -> str:
    """SHA-256 of ``body``, as 64 hex digits (str)."""
    state = _EMPTY_SHA256.copy()
    state.update(body)
    return state.hexdigest()


def digest_function(key: ChainKey | None) -> Callable[[bytes | memoryview], bytes]:
    """The digest of a chain (bytes, for checking): HMAC-SHA256 with ``key``, else SHA-256."""
    return sha256_hex if key is None else key.digest


def genesis(chain_id: str, key: ChainKey | None) -> str:
    """The ``prev_hash`` of a stream's first record: the digest of its ``chain_id``."""
    return digest_function(key)(_GENESIS + chain_id.encode("ascii")).decode("ascii")


class Chain:
    """The state of one stream: its id, the last ``seq`` and the last ``hash``.

    Not thread-safe by itself: each sink seals under the lock that orders its
    writes (the JSON-lines file lock; the SQL writer is one thread).
    """

    __slots__ = ("_digest", "_key", "chain_id", "prev_hash", "seq")

    def __init__(self, key: ChainKey | None = None) -> None:
        self._key = key
        self._digest = sha256_hexdigest if key is None else key.hexdigest
        self.restart()

    def restart(self) -> None:
        """A new stream (a new handler, or a forked child): fresh id, ``seq`` from 1."""
        self.chain_id = os.urandom(16).hex()
        self.seq = 0
        self.prev_hash = genesis(self.chain_id, self._key)

    @property
    def keyed(self) -> bool:
        """Whether records are HMACs (a ``chain_key`` was given)."""
        return self._key is not None

    def seal_lines(self, lines: Iterable[str]) -> bytes:
        """The lines (each one JSON object and its newline) with their chain fields, as bytes.

        Each line's own text is kept; the fields are spliced in before its
        closing brace.  Lone surrogates become backslash escapes, as the sink
        writes them, so what is hashed is exactly what is stored.
        """
        seq = self.seq
        prev = self.prev_hash
        middle = f',"chain_id":"{self.chain_id}","seq":'
        out: list[bytes] = []
        append = out.append
        # the digest inline when there is no key: a call a line is a tenth of the cost
        copy = _EMPTY_SHA256.copy if self._key is None else None
        digest = self._digest
        for line in lines:
            seq += 1
            body = f'{line[:-2]}{middle}{seq},"prev_hash":"{prev}"'.encode(
                "utf-8", "backslashreplace"
            )
            if copy is not None:
                state = copy()
                state.update(body)
                prev = state.hexdigest()
            else:
                prev = digest(body)
            append(body)
            append(f',"hash":"{prev}"}}\n'.encode())
        self.seq = seq
        self.prev_hash = prev
        return b"".join(out)

    def seal_row(self, event_id: str, level: str, time_text: str, data: str) -> tuple[Any, ...]:
        """The chain columns of the next SQL row: ``(chain_id, seq, prev_hash, hash)``."""
        self.seq += 1
        prev = self.prev_hash
        body = canonical_row(
            self.chain_id,
            self.seq,
            prev,
            event_id=event_id,
            level=level,
            time_text=time_text,
            data=data,
        )
        self.prev_hash = self._digest(body)
        return (self.chain_id, self.seq, prev, self.prev_hash)

    def __repr__(self) -> str:
        return f"<Chain {self.chain_id} seq={self.seq} keyed={self.keyed}>"


_LEVELS: dict[str, str] = {}


def canonical_row(
    chain_id: str, seq: int, prev_hash: str, *, event_id: str, level: str, time_text: str, data: str
) -> bytes:
    """The hashed body of a SQL row; ``data`` is the event's ``canonical_json()``.

    ``time_text`` is the row's ``time`` as ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC).
    """
    quoted = _LEVELS.get(level)
    if quoted is None:
        quoted = _LEVELS[level] = json.dumps(level)  # a few level names, ever
    # the sink's ids are hex: quoted as JSON would, without its encoder
    event = f'"{event_id}"' if event_id.isascii() and event_id.isalnum() else json.dumps(event_id)
    return (
        f'{{"chain_id":"{chain_id}","seq":{seq},"prev_hash":"{prev_hash}",'
        f'"event_id":{event},"level":{quoted},"time":"{time_text}","data":{data}}}'
    ).encode("utf-8", "backslashreplace")


# -- canonical JSON ----------------------------------------------------------------------

_stdlib_canonical = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str
).encode
_SCALARS = frozenset((str, int, bool, type(None)))
_MAX_DEPTH = 8
# Floats from 1e16 up are whole numbers that PostgreSQL's JSONB gives back
# without their exponent (1e16 comes back as 10000000000000000, an int), and
# -0.0 comes back as 0.0: canonical JSON writes both as they come back.
_BIG_FLOAT = 1e16


def _plain(values: Iterable[Any], depth: int) -> bool:
    """Whether orjson renders these values, sorted, as the stdlib would, unchanged."""
    for value in values:
        kind = type(value)
        if kind in _SCALARS:
            continue
        if kind is float:
            positive_zero = value == 0 and math.copysign(1, value) > 0
            if not (1e-4 <= abs(value) < _BIG_FLOAT or positive_zero):
                return False
        elif kind is list:
            if value and (depth >= _MAX_DEPTH or not _plain(value, depth + 1)):
                return False
        elif kind is dict:
            if value and (depth >= _MAX_DEPTH or not _plain(value.values(), depth + 1)):
                return False
        else:
            return False
    return True


def _normalised(value: Any) -> Any:
    """``value`` with big and negative-zero floats as JSONB gives them back."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value) and (abs(value) >= _BIG_FLOAT or value == 0):
            return int(value) if value else 0.0
        return value
    if kind is dict:
        return {str(k) if type(k) is not str else k: _normalised(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_normalised(v) for v in value]
    return value


def _load_orjson() -> Callable[[Any], bytes] | None:
    try:
        import orjson  # noqa: PLC0415 - optional
    except ImportError:
        return None
    sort = orjson.OPT_SORT_KEYS

    def encode(value: Any) -> bytes:
        return orjson.dumps(value, option=sort)

    probe = {"b": [1, 0.412, 2.0**52, None, True], "a": {"y": "é\u2028😀", "x": {}}, "é": ""}
    try:
        return encode if encode(probe).decode() == _stdlib_canonical(probe) else None
    except Exception:  # noqa: BLE001 - any surprise from the optional library: do without it
        return None


_orjson_sorted = _load_orjson()


def canonical_json(value: Any) -> str:
    """One text for one JSON value, whatever stored it: sorted keys, compact, not ASCII-escaped.

    Floats from 1e16 up are written as the integers they are and -0.0 as 0.0,
    so the text is the same before a database stores the value and after it
    gives it back.  orjson computes it when installed and the value is plain;
    the text is the stdlib's either way.
    """
    if _orjson_sorted is not None and type(value) is dict:
        try:
            if _plain(value.values(), 0):
                return _orjson_sorted(value).decode()
        except TypeError:
            pass
    try:
        return _stdlib_canonical(_normalised(value))
    except (TypeError, ValueError):  # keys of mixed types: through plain JSON first
        return _stdlib_canonical(_normalised(json.loads(json.dumps(value, default=str))))
