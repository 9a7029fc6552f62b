"""JWKS URL checks: which URLs may be fetched, and how to name one in a message.

A leaf (standard library only), so that ``settings`` can refuse a bad
``jwks_url`` at construction without importing the fetching machinery of
``jwks``, and ``jwks`` can check again before each fetch.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def check_url(url: object) -> str | None:
    """Why ``url`` cannot be a JWKS URL (a message), or ``None`` if it can."""
    if not isinstance(url, str) or not url:
        return "expected an https:// URL"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    del port
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "expected an https:// URL"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not supported"
    if parts.fragment:
        return "a URL with a #fragment is not supported"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return "plain http:// is allowed only for loopback hosts; use https://"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "contains whitespace or control characters"
    return None


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1``."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def safe_location(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: no query string, for messages."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"[:200]


__all__ = ["check_url", "is_loopback", "safe_location"]
