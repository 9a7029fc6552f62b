"""Shared construction of the middlewares: settings, gate, reader, logger."""

from __future__ import annotations

from typing import Any

from .audit import AuditLogger
from .errors import ConfigurationError
from .policy import Gate
from .request import RequestReader
from .settings import Settings


class Components:
    """Everything a middleware needs, built once at construction."""

    __slots__ = ("audit", "gate", "reader", "settings")

    def __init__(self, settings: Settings | None, options: dict[str, Any]) -> None:
        if settings is not None and options:
            raise ConfigurationError(
                next(iter(options)), "give either settings=Settings(...) or options, not both"
            )
        if settings is None:
            settings = Settings(**options)
        elif not isinstance(settings, Settings):
            raise ConfigurationError("settings", "expected a Settings instance")
        self.settings = settings
        self.gate = Gate(settings)
        self.reader = RequestReader(settings)
        self.audit = AuditLogger(log_claims=tuple(settings.log_claims))
