"""Settings: the validated, immutable configuration of the middleware.

Every option of the contract is a keyword-only field.  Validation runs once, at
construction; afterwards the object is frozen and the verifier only reads it.
Values are normalised on the way in (lists become tuples, paths are checked,
``secret_file``, ``public_key_file`` and ``jwks_file`` are read into
``secret``, ``public_key`` and ``jwks``), so
nothing downstream has to guess their shape.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import importlib
import inspect
import ipaddress
import json
import os
import re
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Literal, cast

from .errors import ConfigurationError
from .keys import KeyRing, check_algorithms, is_hmac, load_keyring
from .urls import check_url

RevocationCheck = Callable[[Mapping[str, Any]], "bool | Awaitable[bool]"]
IdentityFunction = Callable[[Mapping[str, Any]], "str | None"]

#: Request headers that claim an identity and that a client could send itself.
#: ``Remote-User`` is always removed; these by default, ``identity_headers`` to change.
ALWAYS_STRIPPED_HEADERS = ("remote-user",)
DEFAULT_IDENTITY_HEADERS = ("x-remote-user", "x-forwarded-user", "x-auth-request-user")
Mode = Literal["enforce", "report-only"]
WebsocketExpiry = Literal["ignore", "close"]
#: Rules that ``report_only`` can put in report-only mode one at a time (contract §9).
REPORT_ONLY_RULES = ("scopes", "lockout", "revocation")

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_SECRET_OPTIONS = frozenset({"secret", "jwks"})
_STATIC_KEY_OPTIONS = (
    "secret",
    "secret_file",
    "public_key",
    "public_key_file",
    "jwks",
    "jwks_file",
)


def _fail(option: str, message: str) -> ConfigurationError:
    return ConfigurationError(option, message)


def _strings(option: str, value: object, *, allow_empty: bool = True) -> tuple[str, ...]:
    """A string or a sequence of strings, as a tuple without duplicates."""
    if isinstance(value, str):
        items: tuple[object, ...] = (value,)
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        items = tuple(value)
    else:
        raise _fail(option, f"expected a string or a list of strings, got {type(value).__name__}")
    strings: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise _fail(option, "every entry must be a non-empty string")
        strings.append(item)
    if not strings and not allow_empty:
        raise _fail(option, "must not be empty")
    return tuple(dict.fromkeys(strings))


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _optional_strings(option: str, value: object) -> tuple[str, ...] | None:
    return None if value is None else _strings(option, value, allow_empty=False)


_METHOD_RULE = re.compile(r"([A-Za-z]+) +(/.*)")
#: the password of a URL's userinfo (``redis://:pw@host``), hidden by ``repr()``
_URL_PASSWORD = re.compile(r"//([^/@:]*:)[^/@]*@")


def _paths(option: str, value: object) -> tuple[str, ...]:
    """Path prefixes, each optionally after a method: ``"/health"``, ``"GET /docs"``."""
    rules = []
    for given in _strings(option, value):
        method_rule = _METHOD_RULE.fullmatch(given)
        if method_rule is not None:  # "get  /docs" is kept as "GET /docs"
            method = method_rule[1].upper()
            if method == "HEAD":  # it would never match: HEAD is decided by GET's rules
                raise _fail(option, f"HEAD follows the GET rules: write 'GET {method_rule[2]}'")
            rules.append(f"{method} {method_rule[2]}")
        elif given.startswith("/"):
            rules.append(given)
        else:
            raise _fail(
                option, f"expected '/path' or 'METHOD /path' (e.g. 'GET /orders'): {given!r}"
            )
    return tuple(dict.fromkeys(rules))


def _number(option: str, value: object, *, minimum: float, integer: bool = False) -> float:
    if isinstance(value, datetime.timedelta) and not integer:
        value = value.total_seconds()
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "an integer" if integer else "a number of seconds"
        raise _fail(option, f"expected {kind}, got {type(value).__name__}")
    if not minimum <= value < float("inf"):  # also false for NaN
        raise _fail(option, f"must be a finite number >= {minimum}")
    return value


def _import_callable(option: str, value: object) -> RevocationCheck | None:
    if value is None:
        return None
    if isinstance(value, str):
        module_name, _, attribute = value.partition(":")
        if not attribute:
            module_name, _, attribute = value.rpartition(".")
        try:
            target: object = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError, ValueError) as exc:
            raise _fail(option, f"cannot import {value!r} ({type(exc).__name__})") from None
        value = target
    if not callable(value):
        raise _fail(option, "expected a callable (claims) -> bool, sync or async")
    return value


_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def _scope_list(option: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split()
    scopes = _strings(option, value, allow_empty=False)
    for scope in scopes:
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise _fail(option, f"{scope!r} is not a scope token (RFC 6749 §3.3)")
    return scopes


def is_async_callable(func: object) -> bool:
    """True for ``async def`` functions and objects with an ``async def __call__``."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - we want the method itself
    )


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated, immutable configuration.

    Build it from keyword arguments, ``Settings.from_mapping()`` (Django's
    ``JWT_AUDIT = {...}``, Flask config) or ``Settings.from_env()``.  Unknown or
    invalid options raise ``ConfigurationError`` here, naming the option, so a
    misconfigured service fails at start-up rather than on its first request.
    ``repr()`` never shows a secret.
    """

    algorithms: Sequence[str] = ()
    secret: str | bytes | None = None
    secret_file: str | os.PathLike[str] | None = None
    public_key: str | bytes | Sequence[str | bytes] | None = None
    public_key_file: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None
    jwks: Mapping[str, Any] | str | None = None
    jwks_file: str | os.PathLike[str] | None = None
    jwks_url: str | None = None
    jwks_timeout: float | datetime.timedelta = 5.0
    jwks_cache_seconds: float | datetime.timedelta = 300.0
    jwks_min_refresh_seconds: float | datetime.timedelta = 30.0
    providers: Sequence[Mapping[str, Any] | Provider] = ()
    issuer: str | Sequence[str] | None = None
    audience: str | Sequence[str] | None = None
    leeway: float | datetime.timedelta = 0
    required_claims: Sequence[str] = ("exp",)
    token_type: str | None = None
    max_token_bytes: int = 8192
    exempt_paths: Sequence[str] = ()
    optional_paths: Sequence[str] = ()
    path_scopes: Mapping[str, Sequence[str] | str] = field(default_factory=dict)
    scopes_claim: str | None = None
    mode: Mode = "enforce"
    revocation_check: RevocationCheck | str | None = None
    trusted_proxies: Sequence[str] = ()
    request_id_header: str | None = "x-request-id"
    log_claims: Sequence[str] = ()
    realm: str = "api"
    cache_size: int = 1024
    identity: str | IdentityFunction = "{sub}"
    identity_headers: Sequence[str] = DEFAULT_IDENTITY_HEADERS
    max_leeway: float | datetime.timedelta = 300.0
    ecdsa_low_s: bool = False
    websocket_expiry: WebsocketExpiry = "ignore"
    websocket_disconnect_events: bool = False
    pass_cors_preflight: bool = False
    """A CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``
    and no ``Authorization``: browsers never send credentials on one) goes to the app
    unauthenticated, so that a CORS layer inside can answer it; audited as exempt.
    Off by default: a handler that ignores the method (a Django function view, a
    plain WSGI app) would answer such a request as a ``GET``.  The Flask extension
    makes it safe (only Flask's automatic ``OPTIONS`` answer may run)."""
    state_url: str | None = None
    abuse_detection: bool | Mapping[str, Any] = False
    report_only: Sequence[str] = ()
    metrics: Any = False
    """``False``, ``True`` (the default ``prometheus_client`` registry) or a
    ``CollectorRegistry`` to publish on (contract §11)."""

    keyring: KeyRing = field(init=False, repr=False, compare=False)
    """The prepared keys, parsed once from ``secret``/``public_key``/``jwks``.

    Empty when the keys come from ``jwks_url`` (the verifier fetches them) or
    from ``providers`` (each ``Provider`` has its own).
    """

    leeway_seconds: float = field(init=False, repr=False, compare=False)
    """``leeway`` in seconds, as a float (``leeway`` keeps the number given)."""

    abuse: AbuseDetection | None = field(init=False, repr=False, compare=False)
    """``abuse_detection`` validated: its thresholds, or ``None`` when it is off."""

    _ENV_KINDS: ClassVar[Mapping[str, str]] = {
        "algorithms": "list",
        "public_key_file": "list",
        "issuer": "list",
        "audience": "list",
        "required_claims": "list",
        "exempt_paths": "list",
        "optional_paths": "list",
        "trusted_proxies": "list",
        "log_claims": "list",
        "identity_headers": "list",
        "leeway": "float",
        "max_leeway": "float",
        "websocket_disconnect_events": "bool",
        "pass_cors_preflight": "bool",
        "ecdsa_low_s": "bool",
        "jwks_timeout": "float",
        "jwks_cache_seconds": "float",
        "jwks_min_refresh_seconds": "float",
        "providers": "json",
        "max_token_bytes": "int",
        "cache_size": "int",
        "path_scopes": "json",
        "abuse_detection": "json",
        "report_only": "list",
        "metrics": "bool",
    }

    def __new__(cls, **options: object) -> Settings:
        cls._check_names(options)
        return super().__new__(cls)

    def __copy__(self) -> Settings:
        return self  # immutable

    def __deepcopy__(self, memo: object) -> Settings:
        return self  # immutable; key objects cannot be deep-copied anyway

    def __reduce__(self) -> tuple[Any, ...]:
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        # their content is in jwks, secret and public_key
        options["jwks_file"] = options["secret_file"] = options["public_key_file"] = None
        if isinstance(options["jwks"], Mapping):
            options["jwks"] = dict(options["jwks"])
        options["path_scopes"] = {k: list(v) for k, v in options["path_scopes"].items()}
        if isinstance(options["abuse_detection"], Mapping):
            options["abuse_detection"] = dict(options["abuse_detection"])
        options["providers"] = [dict(provider.options) for provider in self.trusted_providers]
        return (_rebuild, (options,))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of every option ``Settings`` accepts."""
        return tuple(f.name for f in fields(cls) if f.init)

    @classmethod
    def _check_names(cls, options: Mapping[str, object]) -> None:
        valid = cls.option_names()
        for name in options:
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(name, f"unknown option{hint}")
        if "algorithms" not in options and not options.get("providers"):
            raise ConfigurationError("algorithms", "is required, e.g. algorithms=['RS256']")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Settings:
        """Settings from a mapping such as Django's ``JWT_AUDIT = {...}``.

        Keys are case-insensitive (``"ALGORITHMS"`` and ``"algorithms"`` both
        work); ``revocation_check`` may be an import string (``"pkg.mod:func"``).
        """
        if not isinstance(mapping, Mapping):
            raise ConfigurationError("JWT_AUDIT", "expected a mapping of options")
        options: dict[str, Any] = {}
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise ConfigurationError(repr(key), "option names must be strings")
            options[key.lower()] = value
        return cls(**options)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, prefix: str = "JWT_AUDIT_"
    ) -> Settings:
        """Settings from environment variables: ``JWT_AUDIT_ALGORITHMS=RS256`` …

        Lists are comma-separated (or a JSON array); ``PATH_SCOPES`` and
        ``JWKS`` are JSON; ``REVOCATION_CHECK`` is an import string.  An
        unknown ``JWT_AUDIT_*`` variable is an error, like an unknown option.
        Errors name the variable the user set (``JWT_AUDIT_SECRET_FILE: ...``),
        or the one to set, rather than the option.
        """
        environ = os.environ if environ is None else environ
        options: dict[str, Any] = {}
        variables: dict[str, str] = {}
        for variable, raw in environ.items():
            if not variable.startswith(prefix):
                continue
            name = variable[len(prefix) :].lower()
            options[name] = cls.option_from_text(name, raw, source=variable)
            variables[name] = variable
        try:
            return cls(**options)
        except ConfigurationError as exc:
            raise _variable_error(exc, prefix, variables, cls.option_names()) from None

    @classmethod
    def option_from_text(cls, name: str, raw: str, *, source: str | None = None) -> object:
        """An option's value from text, as ``from_env`` reads it (lists split on commas).

        ``source`` names the variable or config key in errors (default: ``name``).
        """
        variable = source or name
        kind = cls._ENV_KINDS.get(name, "str")
        text = raw.strip()
        try:
            if kind == "list":
                if text.startswith("["):
                    return json.loads(text)
                items = [item.strip() for item in text.split(",") if item.strip()]
                return items[0] if len(items) == 1 and name in ("issuer", "audience") else items
            if kind == "float":
                return float(text)
            if kind == "int":
                return int(text)
            if kind == "bool":
                return _boolean(text)
            if kind == "json":
                return json.loads(text)
        except ValueError:
            raise ConfigurationError(variable, f"cannot parse the value as {kind}") from None
        if name in _SECRET_OPTIONS or name == "public_key":
            return raw  # key material is taken verbatim
        return text or None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name, minimum in (
            ("jwks_timeout", 0.01),
            ("jwks_cache_seconds", 0.1),
            ("jwks_min_refresh_seconds", 0.0),
        ):
            set_(self, name, float(_number(name, getattr(self, name), minimum=minimum)))
        if self.providers is not None and not (
            isinstance(self.providers, (list, tuple)) and not self.providers
        ):
            self._set_providers()
            return self._post_init_rest(KeyRing((), self.algorithms))
        set_(self, "providers", ())
        algorithms = _strings("algorithms", self.algorithms, allow_empty=False)
        set_(self, "algorithms", algorithms)
        if self.jwks_url is not None:
            problem = check_url(self.jwks_url)
            if problem is not None:
                raise _fail("jwks_url", problem)
            for other in _STATIC_KEY_OPTIONS:
                if getattr(self, other) is not None:
                    raise _fail("jwks_url", f"give either jwks_url or {other}, not both")
            check_remote_algorithms("jwks_url", algorithms)
            return self._post_init_rest(KeyRing((), algorithms))

        loaded = load_keyring(
            "",
            algorithms,
            secret=self.secret,
            secret_file=self.secret_file,
            public_key=self.public_key,
            public_key_file=self.public_key_file,
            jwks=self.jwks,
            jwks_file=self.jwks_file,
        )
        set_(self, "secret", loaded.secret)
        set_(self, "public_key", loaded.public_key)
        jwks = loaded.jwks
        set_(self, "jwks", MappingProxyType(jwks) if isinstance(jwks, dict) else jwks)
        return self._post_init_rest(loaded.keyring)

    def _post_init_rest(self, keyring: KeyRing) -> None:
        set_ = object.__setattr__
        set_(self, "keyring", keyring)
        set_(self, "issuer", _optional_strings("issuer", self.issuer))
        set_(self, "audience", _optional_strings("audience", self.audience))
        max_leeway = float(_number("max_leeway", self.max_leeway, minimum=0))
        set_(self, "max_leeway", max_leeway)
        leeway = _number("leeway", self.leeway, minimum=0)
        if leeway > max_leeway:
            raise _fail(
                "leeway",
                f"{leeway:g} s exceeds max_leeway ({max_leeway:g} s): a clock skew that"
                " large accepts long-expired tokens; raise max_leeway to mean it",
            )
        set_(self, "leeway", leeway)
        set_(self, "leeway_seconds", float(leeway))
        identity_resolver("identity", self.identity)  # refuses a bad template now
        set_(self, "identity_headers", self._identity_headers())
        set_(self, "required_claims", _strings("required_claims", self.required_claims))
        set_(self, "token_type", self._token_type())
        set_(
            self,
            "max_token_bytes",
            int(_number("max_token_bytes", self.max_token_bytes, minimum=64, integer=True)),
        )
        set_(
            self,
            "cache_size",
            int(_number("cache_size", self.cache_size, minimum=0, integer=True)),
        )
        set_(self, "exempt_paths", _paths("exempt_paths", self.exempt_paths))
        set_(self, "optional_paths", _paths("optional_paths", self.optional_paths))
        set_(self, "path_scopes", self._path_scopes())
        if self.scopes_claim is not None and (
            not isinstance(self.scopes_claim, str) or not self.scopes_claim
        ):
            raise _fail("scopes_claim", "expected a claim name")
        if self.websocket_expiry not in ("ignore", "close"):
            raise _fail("websocket_expiry", "expected 'ignore' or 'close'")
        if not isinstance(self.ecdsa_low_s, bool):
            raise _fail("ecdsa_low_s", "expected true or false")
        if not isinstance(self.websocket_disconnect_events, bool):
            raise _fail("websocket_disconnect_events", "expected true or false")
        if not isinstance(self.pass_cors_preflight, bool):
            raise _fail("pass_cors_preflight", "expected true or false")
        if self.mode not in ("enforce", "report-only"):
            raise _fail("mode", f"expected 'enforce' or 'report-only', got {self.mode!r}")
        set_(self, "report_only", self._report_only())
        set_(self, "state_url", self._state_url())
        abuse = AbuseDetection.from_option(self.abuse_detection)
        set_(self, "abuse", abuse)
        set_(self, "abuse_detection", False if abuse is None else abuse.as_mapping())
        if not isinstance(self.metrics, bool):
            _check_registry(self.metrics)
        elif self.metrics:
            _import_extra("metrics", "prometheus_client", "metrics")
        set_(self, "revocation_check", _import_callable("revocation_check", self.revocation_check))
        set_(self, "trusted_proxies", self._trusted_proxies())
        set_(self, "request_id_header", self._request_id_header())
        set_(self, "log_claims", _strings("log_claims", self.log_claims))
        if (
            not isinstance(self.realm, str)
            or not self.realm.isprintable()
            or '"' in self.realm
            or "\\" in self.realm
        ):
            raise _fail("realm", "expected printable text without quotes or backslashes")

    def _set_providers(self) -> None:
        """Validate ``providers``; ``algorithms`` defaults to the union of theirs."""
        value = self.providers
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) or not value:
            raise _fail("providers", "expected a list of mappings, one per trusted issuer")
        for other in (*_STATIC_KEY_OPTIONS, "jwks_url"):
            if getattr(self, other) is not None:
                raise _fail(other, "set keys per provider when providers is used")
        if self.issuer is not None:
            raise _fail("issuer", "set issuer per provider when providers is used")
        given = self.algorithms
        algorithms = _strings("algorithms", given) if given not in (None, ()) else ()
        audience = _optional_strings("audience", self.audience)
        built: list[Provider] = []
        for index, raw in enumerate(value):
            provider = _provider(f"providers[{index}]", raw, algorithms, audience)
            if any(p.issuer == provider.issuer for p in built):
                raise _fail(f"providers[{index}].issuer", "two providers have the same issuer")
            built.append(provider)
        if not algorithms:
            algorithms = tuple(dict.fromkeys(a for p in built for a in p.algorithms))
        object.__setattr__(self, "algorithms", algorithms)
        object.__setattr__(self, "providers", tuple(built))

    def _token_type(self) -> str | None:
        value = self.token_type
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _fail("token_type", "expected a media type such as 'at+jwt'")
        return normalise_media_type(value)

    def _path_scopes(self) -> Mapping[str, tuple[str, ...]]:
        if not isinstance(self.path_scopes, Mapping):
            raise _fail("path_scopes", "expected a mapping {path prefix: [scope, ...]}")
        rules: dict[str, tuple[str, ...]] = {}
        for prefix, scopes in self.path_scopes.items():
            (path,) = _paths("path_scopes", prefix)
            # an empty list carves a prefix out of a shorter rule ("/" covers every path)
            empty = isinstance(scopes, (list, tuple, str)) and not scopes
            rules[path] = () if empty else _scope_list("path_scopes", scopes)
        return MappingProxyType(rules)

    def _trusted_proxies(self) -> tuple[str, ...]:
        entries = _strings("trusted_proxies", self.trusted_proxies)
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise _fail("trusted_proxies", f"not an IP network: {entry!r}") from None
        return entries

    def _identity_headers(self) -> tuple[str, ...]:
        names = _strings("identity_headers", self.identity_headers)
        for name in names:
            if not _HEADER_NAME.match(name):
                raise _fail("identity_headers", f"not an HTTP header name: {name!r}")
        lowered = (*ALWAYS_STRIPPED_HEADERS, *(name.lower() for name in names))
        return tuple(dict.fromkeys(lowered))

    def _report_only(self) -> tuple[str, ...]:
        rules = _strings("report_only", self.report_only)
        for rule in rules:
            if rule not in REPORT_ONLY_RULES:
                close = difflib.get_close_matches(rule, REPORT_ONLY_RULES, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(REPORT_ONLY_RULES)
                raise _fail("report_only", f"unknown rule {rule!r} (rules: {known}){hint}")
        return rules

    def _state_url(self) -> str | None:
        url = self.state_url
        if url is None:
            return None
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise _fail("state_url", "expected redis://host:port/db, rediss://... or unix://...")
        _import_extra("state_url", "redis", "redis")
        from redis.connection import parse_url  # noqa: PLC0415 - optional extra

        try:
            parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError as exc:  # redis-py's message never holds the password
            raise _fail("state_url", f"not a usable Redis URL ({exc})") from None
        return url

    def _request_id_header(self) -> str | None:
        value = self.request_id_header
        if value is None:
            return None
        if not isinstance(value, str) or not _HEADER_NAME.match(value):
            raise _fail("request_id_header", "expected an HTTP header name")
        return value.lower()

    @property
    def trusted_providers(self) -> tuple[Provider, ...]:
        """``providers``, validated (empty when a single key source is configured)."""
        return cast("tuple[Provider, ...]", self.providers)

    @property
    def revocation_is_async(self) -> bool:
        """Whether ``revocation_check`` must be awaited."""
        return is_async_callable(self.revocation_check)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if value is None or value in (f.default, ()) or value == {}:
                continue
            if f.name in _SECRET_OPTIONS:
                value = "<redacted>"
            elif f.name in ("state_url", "jwks_url"):
                value = _URL_PASSWORD.sub(r"//\1***@", value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class AbuseDetection:
    """The thresholds of ``abuse_detection`` (contract §9), validated."""

    window_seconds: int = 60
    denials_per_ip: int = 20
    denials_per_subject: int = 10
    ips_per_token: int = 3
    lockout_seconds: int = 0

    @classmethod
    def from_option(cls, value: object) -> AbuseDetection | None:
        """``None`` for ``False``; the defaults for ``True``; else a mapping checked."""
        if value is False or value is None:
            return None
        if value is True:
            return cls()
        if isinstance(value, AbuseDetection):
            return value
        if not isinstance(value, Mapping):
            raise _fail("abuse_detection", "expected true, false or a mapping of thresholds")
        names = [f.name for f in fields(cls)]
        given: dict[str, int] = {}
        for name, raw in value.items():
            if name not in names:
                close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise _fail(f"abuse_detection.{name}", f"unknown threshold{hint}")
            minimum = 0 if name == "lockout_seconds" else 1
            given[name] = int(
                _number(f"abuse_detection.{name}", raw, minimum=minimum, integer=True)
            )
        return cls(**given)

    def as_mapping(self) -> Mapping[str, int]:
        """The thresholds as a read-only mapping (``Settings.abuse_detection``)."""
        return MappingProxyType({f.name: getattr(self, f.name) for f in fields(self)})


def _variable_error(
    exc: ConfigurationError, prefix: str, variables: Mapping[str, str], valid: Sequence[str]
) -> ConfigurationError:
    """``exc`` of ``from_env``, naming the variable (``JWT_AUDIT_PUBKEY``), not the option."""
    option = exc.option
    message = str(exc)[len(option) + 2 :]
    head = re.split(r"[.\[]", option, maxsplit=1)[0]  # "providers" of "providers[0].issuer"
    if message.startswith("unknown option"):
        close = difflib.get_close_matches(head, valid, n=1, cutoff=0.6)
        message = "unknown option" + (
            f"; did you mean '{prefix}{close[0].upper()}'?" if close else ""
        )
    elif head not in valid:
        return exc
    return ConfigurationError(
        variables.get(head, prefix + head.upper()) + option[len(head) :], message
    )


def _import_extra(option: str, module: str, extra: str) -> None:
    """Refuse an option whose optional dependency is not installed, naming the extra."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise _fail(
            option, f"needs {module}: pip install 'jwt-audit-middleware[{extra}]'"
        ) from None


def _check_registry(value: object) -> None:
    _import_extra("metrics", "prometheus_client", "metrics")
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - optional extra

    if not isinstance(value, CollectorRegistry):
        raise _fail("metrics", "expected true, false or a prometheus_client CollectorRegistry")


def check_remote_algorithms(option: str, algorithms: Sequence[str]) -> None:
    """Algorithms usable with keys fetched from a URL: asymmetric ones only."""
    check_algorithms(algorithms, "algorithms")
    hmac = [alg for alg in algorithms if is_hmac(alg)]
    if hmac:
        raise _fail(
            option,
            f"{hmac[0]} needs a shared secret, not a published key; use secret for HMAC",
        )


_PROVIDER_OPTIONS = (
    "issuer",
    "algorithms",
    "audience",
    "secret",
    "public_key",
    "jwks",
    "jwks_file",
    "jwks_url",
    "identity",
)
_PROVIDER_KEY_SOURCES = ("secret", "public_key", "jwks", "jwks_file", "jwks_url")


@dataclass(frozen=True, slots=True)
class Provider:
    """One trusted issuer of ``providers``: its key source and its policy.

    ``keyring`` holds the static keys (``secret``, ``public_key``, ``jwks``,
    ``jwks_file``); with ``jwks_url`` it is empty and the verifier fetches.
    """

    issuer: str
    algorithms: tuple[str, ...]
    audience: tuple[str, ...] | None
    keyring: KeyRing = field(compare=False)
    jwks_url: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """The validated options (``jwks_file`` read into ``jwks``), to rebuild it."""
    identity: str | IdentityFunction | None = field(default=None, compare=False)
    """This provider's ``identity`` template (``None``: the top-level option's)."""

    def __repr__(self) -> str:  # never show key material
        source = f"jwks_url={self.jwks_url!r}" if self.jwks_url else f"{len(self.keyring)} keys"
        return (
            f"Provider(issuer={self.issuer!r}, algorithms={list(self.algorithms)!r}, "
            f"audience={self.audience!r}, {source})"
        )


def _provider(
    where: str,
    raw: object,
    default_algorithms: tuple[str, ...],
    default_audience: tuple[str, ...] | None,
) -> Provider:
    if not isinstance(raw, Mapping):
        raise _fail(where, "expected a mapping with issuer, a key source, audience, algorithms")
    options: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.lower() if isinstance(key, str) else key
        if name not in _PROVIDER_OPTIONS:
            close = difflib.get_close_matches(str(name), _PROVIDER_OPTIONS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _fail(f"{where}.{name}", f"unknown provider option{hint}")
        options[name] = value
    issuer = options.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise _fail(f"{where}.issuer", "is required: the exact iss of this provider's tokens")
    if "algorithms" in options:
        algorithms = _strings(f"{where}.algorithms", options["algorithms"], allow_empty=False)
        check_algorithms(algorithms, f"{where}.algorithms")
        outside = [a for a in algorithms if default_algorithms and a not in default_algorithms]
        if outside:
            raise _fail(f"{where}.algorithms", f"{outside[0]!r} is not in algorithms")
    elif default_algorithms:
        algorithms = default_algorithms
    else:
        raise _fail(f"{where}.algorithms", "is required (or set algorithms for every provider)")
    check_algorithms(algorithms, f"{where}.algorithms")
    options["algorithms"] = list(algorithms)
    audience = default_audience
    if options.get("audience") is not None:
        audience = _optional_strings(f"{where}.audience", options["audience"])
    identity = options.get("identity")
    if identity is not None:
        identity_resolver(f"{where}.identity", identity)
    sources = [name for name in _PROVIDER_KEY_SOURCES if options.get(name) is not None]
    if len(sources) != 1:
        raise _fail(
            f"{where}.{sources[1] if sources else 'jwks_url'}",
            "give exactly one key source: secret, public_key, jwks, jwks_file or jwks_url",
        )
    (source,) = sources
    if source == "jwks_url":
        url = options["jwks_url"]
        problem = check_url(url)
        if problem is not None:
            raise _fail(f"{where}.jwks_url", problem)
        check_remote_algorithms(f"{where}.jwks_url", algorithms)
        return Provider(
            issuer, algorithms, audience, KeyRing((), algorithms), url, options, identity
        )
    loaded = load_keyring(
        where,
        algorithms,
        secret=options.get("secret"),
        public_key=options.get("public_key"),
        jwks=options.get("jwks"),
        jwks_file=options.pop("jwks_file", None),
        algorithms_option=source,
    )
    normalised = {"secret": loaded.secret, "public_key": loaded.public_key, "jwks": loaded.jwks}
    # what a pickled copy rebuilds from: a jwks_file's content travels as jwks
    options.update((name, value) for name, value in normalised.items() if value is not None)
    return Provider(issuer, algorithms, audience, loaded.keyring, None, options, identity)


_IDENTITY_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_:.-]{0,63}")


def identity_resolver(option: str, value: object) -> IdentityFunction:
    """The function that makes a verified token's identity from its claims.

    ``value`` is a template naming claims in braces (``"{sub}"``,
    ``"{iss}|{sub}"``, ``"partner:{sub}"``): each named claim must be a
    non-empty string, else the token has no identity (no ``REMOTE_USER``).  Or
    a callable ``(claims) -> str | None``.
    """
    if callable(value):
        return cast("IdentityFunction", value)
    if not isinstance(value, str) or not value:
        raise _fail(option, "expected a template such as '{iss}|{sub}' or a callable")
    names: list[str] = []
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError:
        raise _fail(option, "unbalanced braces in the template") from None
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if not _IDENTITY_FIELD.fullmatch(name) or spec or conversion:
            raise _fail(option, f"{{{name}}} is not a claim name (write '{{sub}}', '{{iss}}')")
        names.append(name)
    if not names:
        raise _fail(option, "the template names no claim, e.g. '{sub}'")
    if value == "{sub}":
        return _subject_identity
    fields = tuple(dict.fromkeys(names))

    def resolve(claims: Mapping[str, Any]) -> str | None:
        values = {}
        for name in fields:
            claim = claims.get(name)
            if not isinstance(claim, str) or not claim:
                return None
            values[name] = claim
        return value.format_map(values)

    return resolve


def _subject_identity(claims: Mapping[str, Any]) -> str | None:
    subject = claims.get("sub")
    return subject if isinstance(subject, str) and subject else None


def _rebuild(options: dict[str, Any]) -> Settings:
    return Settings(**options)


def normalise_media_type(value: str) -> str:
    """``application/at+JWT`` -> ``at+jwt`` (RFC 7515 §4.1.9 allows either form)."""
    value = value.strip().lower()
    return value[len("application/") :] if value.startswith("application/") else value


__all__ = [
    "IdentityFunction",
    "Mode",
    "Provider",
    "RevocationCheck",
    "Settings",
    "identity_resolver",
    "is_async_callable",
]
