"""Logging: structlog everywhere, JSON lines off a TTY (journald), a console renderer on a TTY.

Stdlib loggers (SQLAlchemy, httpx, apscheduler, uvicorn) are routed through the same processors,
and the last processor before rendering masks every configured secret value, wherever it appears.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

MASK = "***"


class SecretMasker:
    """A structlog processor replacing each secret value (and only those) by '***'."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: list[str] = []
        self.set(secrets)

    def set(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is masked whole. Very short values are
        # not secrets worth masking and would shred every log line.
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def mask(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {k: self.mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.mask(v) for v in value)
        if isinstance(value, BaseException | bytes):
            return self.mask(str(value))
        return value

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self.secrets:
            return event_dict
        for key, value in list(event_dict.items()):
            event_dict[key] = self.mask(value)
        return event_dict


masker = SecretMasker()
_level = "INFO"


def configure_logging(
    *, secrets: Iterable[str] = (), json: bool | None = None, level: str | None = None, stream: Any = None
) -> None:
    """Idempotent; call again (e.g. after loading the config) to add secrets to mask.

    `level` None keeps the level of the previous call (INFO the first time), so a reconfiguration
    that only adds secrets (config reload) does not undo `--log-level`.
    """
    global _level
    level = _level = level or _level
    stream = stream or sys.stderr
    masker.set(secrets)
    if json is None:
        json = not stream.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json else _identity,
            masker,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_sweeper", False):
            root.removeHandler(old)
    handler._sweeper = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty libraries: their INFO lines are per request.
    for name in (
        "httpx",
        "httpcore",
        "sqlalchemy.engine",
        "apscheduler.executors.default",
        "alembic.runtime.migration",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _identity(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event_dict
