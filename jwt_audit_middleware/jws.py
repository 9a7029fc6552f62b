"""The compact JWS, read strictly: Authorization header values in, segments and JSON out.

What RFC 7515 and RFC 6750 say about the text of a token and nothing about
its meaning: the bearer token of an ``Authorization`` header, the three
non-empty segments, unpadded base64url (canonical for the signature), UTF-8
JSON objects without duplicate members or non-finite numbers.  Every failure
is a ``Denied`` (or, for the signature, ``None``) without token text; the
verifier adds what it knows of the token (alg, kid) to its own denials.

It imports only ``errors`` and the standard library.  Each helper is one call
on the first-seen path, so they do their work in few C calls.
"""

from __future__ import annotations

import json
import math
from binascii import a2b_base64
from collections.abc import Callable, Sequence
from typing import Any

from .errors import Denied

_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


def extract_token(values: Sequence[str], max_bytes: int) -> str:
    """The bearer token of an ``Authorization`` header (RFC 6750 §2.1).

    ``values`` are every ``Authorization`` header of the request.
    """
    if not values:
        raise Denied("missing_token", "no Authorization header")
    if len(values) > 1:
        raise Denied("invalid_request", "several Authorization headers")
    value = values[0]
    if len(value) > max_bytes + 64:
        raise Denied("token_too_large", "the Authorization header exceeds max_token_bytes")
    value = value.strip(" \t")
    if not value:
        raise Denied("invalid_request", "empty Authorization header")
    if value[:6].lower() != "bearer":
        raise Denied("unsupported_scheme", "the Authorization scheme is not Bearer")
    rest = value[6:]
    if not rest:
        raise Denied("invalid_request", "empty bearer token")
    if rest[0] != " ":
        if " " in rest:  # a longer scheme name such as "Bearers x"
            raise Denied("unsupported_scheme", "the Authorization scheme is not Bearer")
        raise Denied("invalid_request", "the scheme must be followed by one space")
    token = rest.lstrip(" ")
    if not token:
        raise Denied("invalid_request", "empty bearer token")
    if len(token) > max_bytes:
        raise Denied("token_too_large", "the token exceeds max_token_bytes")
    # only base64url and "." (what is left once those are deleted is empty)
    if not token.isascii() or token.encode("ascii").translate(None, _TOKEN_CHARS):
        raise Denied("invalid_request", "the token has characters outside base64url and '.'")
    return token


def split(token: str) -> tuple[str, str, str]:
    """The header, payload and signature segments of a compact JWS.

    The same answer as ``token.split(".")`` checked for three parts, found with
    three searches instead of a list.  Header and payload are never empty; the
    signature may be (an unsecured ``alg: none`` JWS, RFC 7515 §A.5), so that
    the verifier names the attack ``algorithm_not_allowed`` once it has read
    the header, and refuses an empty signature for any other alg.
    """
    first = token.find(".")
    last = token.rfind(".")
    # two dots, the first not at the start, not side by side, none between them
    if not 0 < first < last - 1 or token.find(".", first + 1, last) >= 0:
        raise Denied("malformed_token", "a JWS has three segments")
    return token[:first], token[first + 1 : last], token[last + 1 :]


#: "=" padding for an unpadded base64 text of length n, by n % 4 (1 is never valid)
_PAD = ("", "===", "==", "=")
#: for a text of length n: the last characters whose unused low bits are zero, by
#: n % 4 (2: 4 unused bits, values 0, 16, 32, 48; 3: 2 bits, multiples of 4)
_CANONICAL_LAST = ("", "", "AQgw", "AEIMQUYcgkosw048")


def b64decode(segment: str) -> bytes:
    """Unpadded base64url text to bytes, exactly as ``base64.urlsafe_b64decode`` does.

    Like it, characters outside the alphabet are skipped (a token from
    ``extract_token`` has none); a text that is not ASCII is a ``ValueError``,
    a bad length a ``binascii.Error`` (also a ``ValueError``).
    """
    return a2b_base64((segment + _PAD[len(segment) & 3]).replace("-", "+").replace("_", "/"))


def signature_bytes(segment: str) -> bytes | None:
    """A signature's bytes; ``None`` unless ``segment`` is canonical unpadded base64url.

    Canonical: base64url characters only, no padding, a length that is not
    1 more than a multiple of 4, and the last character's unused low bits zero
    (so a signature has exactly one text, the one ``urlsafe_b64encode`` gives).
    A text that is not ASCII is a ``ValueError``.
    """
    size = len(segment) & 3
    if size == 1 or "+" in segment or "/" in segment or "=" in segment:
        return None
    if size and segment[-1] not in _CANONICAL_LAST[size]:
        return None
    signature = a2b_base64(segment.replace("-", "+").replace("_", "/") + _PAD[size])
    # a2b_base64 skips characters outside the alphabet; every one of them costs
    # at least one byte of output (6 bits less, and n % 4 == 1 is refused above)
    return signature if len(signature) == len(segment) * 3 // 4 else None


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _reject_constant(name: str) -> None:
    raise ValueError("NaN and Infinity are not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: no JSON line may carry "Infinity" later
        raise ValueError("number out of range")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates,
    parse_constant=_reject_constant,
    parse_float=_finite_float,
)
#: ``json.loads`` with the strict hooks above
decode_json = _DECODER.decode
#: what decode_json runs once leading whitespace is skipped: (value, end), or
#: StopIteration where no value starts (typeshed does not list the attribute)
_scan_json: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\n\r"  # json.decoder.WHITESPACE


def json_object(segment: str, what: str) -> dict[str, Any]:
    """The JSON object a base64url segment encodes; ``what`` names it in the denial."""
    try:
        text = b64decode(segment).decode("utf-8")
        if text[:1] == "{":  # what decode_json does, without its calls around the scanner
            value, end = _scan_json(text, 0)
            if end != len(text) and text[end:].strip(_JSON_SPACE):
                raise ValueError("extra data")
        else:  # leading whitespace, or not an object
            value = decode_json(text)
    except (ValueError, RecursionError, StopIteration):  # binascii.Error is a ValueError
        raise Denied("malformed_token", f"the {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise Denied("malformed_token", f"the {what} is not a JSON object")
    return value
