"""Reading log records in tests: fields of a structlog event or a stdlib record, and the line
the production redacting formatter renders for it."""

from __future__ import annotations

import logging
from typing import Any

from rustynet.adapters.logging import redacting_formatter

_FORMATTER = redacting_formatter(json=True)


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The key-values of a record: a structlog event's dict, or a stdlib record's attributes."""
    if isinstance(record.msg, dict):
        return dict(record.msg)
    return {**record.__dict__, "event": record.getMessage()}


def event_name(record: logging.LogRecord) -> str:
    """The event name (`http.request_failed`) of a structlog event or stdlib record."""
    return str(event_fields(record)["event"])


def rendered(record: logging.LogRecord) -> str:
    """The line the production handler writes for `record` (redacted, scrubbed JSON)."""
    return _FORMATTER.format(record)
