"""Logging: structlog (JSON or console) with secret redaction, and stdlib logging routed through it.

The one rule: no secret reaches a log line. Every record, from structlog or from a stdlib logger
(aiohttp, asyncio, libraries), goes through one `ProcessorFormatter` whose chain redacts:

1. by name: the value of any field whose name contains token, secret, password, passphrase,
   authorization, api_key, private_key, seed or cookie (case-insensitive; `_`/`-` ignored)
   becomes ``[redacted]``, however deeply it is nested in dicts and lists;
2. by content: any text that carries one of our secret markers (`rnsk_`, `rntsk_`, `rnjoin1_`,
   `v4.public.`, `v4.local.`, `rnk_`) has the secret cut out, in every string value, the event
   message and dict keys; `name=value` / `name: value` pairs for the names above inside free
   text (query strings, header dumps, reprs) lose their value too; bytearrays (where our
   secrets live) are never printed;
3. as a last net, the rendered line itself is scrubbed again by content, which catches secrets
   inside tracebacks and object reprs that were only turned into text by the renderer.

`configure_logging(level, json)` owns the root logger's handlers: it replaces them with the one
redacting handler (`redacting_formatter`), so nothing writes around it, and routes structlog
events into stdlib loggers (`configure_structlog`, which the test suite calls too). This is the
only module that touches stdlib logging (tests/arch/test_logging_style.py): the rest of the
code logs with `structlog.get_logger(name)` and key-value fields.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from rustynet.domain.audit import SECRET_MARKERS, is_secret_name

REDACTED: Final = "[redacted]"
_HANDLER_NAME: Final = "rustynet-redacting"

_SECRET_TEXT: Final = re.compile(
    "(?:" + "|".join(re.escape(m) for m in SECRET_MARKERS) + r")[^\s\"'`\\<>()\[\]{},;&]*"
)
_NAMED_SECRET: Final = re.compile(
    r"(?i)([\w.-]*(?:token|secret|passw(?:or)?d|passphrase|authorization|api[_-]?key"
    r"|private[_-]?key|cookie)[\w.-]*[\"']?\s*[=:]\s*[\"']?)"
    r"(?!\[redacted\])(?:(?:bearer|basic)\s+)?[^\s\"'&,;)}\]]+"
)


def redact_text(text: str) -> str:
    """Cut secrets out of free text: marked secrets and `name=value` pairs for secret names."""
    text = _SECRET_TEXT.sub(REDACTED, text)
    return _NAMED_SECRET.sub(lambda m: m.group(1) + REDACTED, text)


def redact_value(value: object) -> object:
    """Redact a logged value recursively (by content; by name inside mappings)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytearray):
        return REDACTED
    if isinstance(value, bytes):
        text = value.decode("latin-1")
        return REDACTED if redact_text(text) != text else value
    if isinstance(value, Mapping):
        return _redact_mapping(value)
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(redact_value(v) for v in value) if not _is_named_tuple(value) else value
    return value


def _redact_mapping(value: Mapping[Any, object]) -> dict[Any, object]:
    return {
        (redact_text(k) if isinstance(k, str) else k): (
            REDACTED if isinstance(k, str) and is_secret_name(k) else redact_value(v)
        )
        for k, v in value.items()
    }


def _is_named_tuple(value: object) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact by field name and by content, everywhere in the event."""
    return _redact_mapping(event_dict)


class _ScrubbedRenderer:
    """Wrap the final renderer and scrub the rendered line (tracebacks, reprs)."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        rendered = self._renderer(logger, method, event_dict)
        text = rendered if isinstance(rendered, str) else str(rendered)
        return redact_text(text)


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


def redacting_formatter(json: bool = True, colors: bool = False) -> logging.Formatter:
    """The one formatter: every record (structlog or stdlib) is redacted, rendered, scrubbed."""
    renderer: Processor = (
        structlog.processors.JSONRenderer(sort_keys=True)
        if json
        else structlog.dev.ConsoleRenderer(colors=colors)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,
            _ScrubbedRenderer(renderer),
        ],
    )


def configure_structlog() -> None:
    """Route structlog events into stdlib loggers, for the redacting formatter to render.

    Each event becomes a stdlib record (on the logger named at `structlog.get_logger(name)`)
    whose message is the event dict; level filtering is the stdlib logger's.
    """
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def set_level(level: int | str) -> None:
    """Change the root logger's level (a configuration reload); handlers stay."""
    logging.getLogger().setLevel(_numeric_level(level))


def _numeric_level(level: int | str) -> int:
    numeric = logging.getLevelNamesMapping().get(level.upper()) if isinstance(level, str) else level
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    return numeric


def configure_logging(
    level: int | str = "info", json: bool = True, stream: TextIO | None = None
) -> None:
    """Configure structlog and stdlib logging to write redacted JSON (or console) lines.

    `stream` defaults to stderr. Replaces every handler on the root logger, so stdlib records
    (aiohttp and other libraries) pass through the same redaction.
    """
    numeric = _numeric_level(level)
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(redacting_formatter(json=json, colors=out.isatty()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    configure_structlog()
