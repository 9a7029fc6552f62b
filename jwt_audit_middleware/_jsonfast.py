"""Compact JSON text of audit events; orjson when it is installed, the same text either way.

``dumps(value)`` returns exactly what the stdlib encoder the sinks have always
used returns, ``json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
default=str).encode(value)``, byte for byte, for every value.  With the optional
``orjson`` (``pip install 'jwt-audit-middleware[fast]'``) an audit event costs
about a third of the time; without it, nothing changes.

orjson renders a few values differently from the stdlib: floats below 1e-4 in
magnitude (``0.00001`` for ``1e-05``), NaN and the infinities (``null`` for
``NaN``) and ``enum.Enum`` members (their value for ``str(member)``).  So orjson
only gets a dict made of plain values, checked first: ``str``, ``int``,
``bool``, ``None``, finite floats that are 0 or at least 1e-4 in magnitude, and
lists, tuples and dicts of those, a few levels deep.  Anything else, and
anything orjson refuses (an int beyond 64 bits, a key that is not a string, a
lone surrogate), goes to the stdlib encoder.  An import-time probe leaves
orjson out if the installed version renders any of a set of sample values
differently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["FAST", "dumps", "stdlib_dumps"]

#: The stdlib encoder: the reference output, and the fallback.
stdlib_dumps: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=str
).encode

#: Types both encoders render alike, whatever the value.
_SCALARS = frozenset((str, int, bool, type(None)))
_MAX_FLOAT = 1.7976931348623157e308
_MAX_DEPTH = 8


def _plain(values: Iterable[Any], depth: int) -> bool:
    """Whether every value, all the way down, renders the same in orjson and the stdlib."""
    for value in values:
        kind = type(value)
        if kind in _SCALARS:
            continue
        if kind is float:
            # NaN fails both comparisons, the infinities the first
            if not (1e-4 <= abs(value) <= _MAX_FLOAT or value == 0):
                return False
        elif kind is list or kind is tuple:
            if value and (depth >= _MAX_DEPTH or not _plain(value, depth + 1)):
                return False
        elif kind is dict:
            if value and (depth >= _MAX_DEPTH or not _plain(value.values(), depth + 1)):
                return False
        else:
            return False
    return True


_encode: Callable[[Any], bytes] | None
try:
    import orjson
except ImportError:  # the optional extra is not installed
    _encode = None
else:
    _encode = orjson.dumps


def orjson_dumps(value: Any) -> str:
    """``stdlib_dumps(value)``, computed by orjson when that gives the same text."""
    if _encode is not None and type(value) is dict:
        try:
            if _plain(value.values(), 0):
                return _encode(value).decode()
        except TypeError:  # orjson refused it (JSONEncodeError), or a type is unhashable
            pass
    return stdlib_dumps(value)


_PROBE = {
    "text": "".join(map(chr, range(0x2100))) + "\u2028\u2029\U0001f600\ufeff",
    "numbers": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, True, False, None],
    "floats": [0.0, -0.0, 1e-4, -0.000123, 0.412, 1.5, 1e15, 1e16, 1e22, 2.0**64, 1e308],
    "nested": {"a": [], "b": {}, "c": ("x", 1, [{"d": None}])},
}


def _orjson_agrees() -> bool:
    if _encode is None:
        return False
    try:
        return bool(_encode(_PROBE).decode() == stdlib_dumps(_PROBE))
    except Exception:  # noqa: BLE001 - any surprise from the optional library: do without it
        return False


#: Whether ``dumps`` uses orjson.
FAST = _orjson_agrees()

#: The JSON text of a value: compact, non-ASCII as is, ``str()`` of what JSON lacks.
dumps: Callable[[Any], str] = orjson_dumps if FAST else stdlib_dumps
