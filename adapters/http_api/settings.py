"""Settings of the HTTP adapter (bootstrap fills them from control.toml)."""

from __future__ import annotations

from typing import Final

import attrs

DEFAULT_BODY_LIMIT: Final = 64 * 1024
DOCUMENT_BODY_LIMIT: Final = 1024 * 1024  # policy documents


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive")


@attrs.frozen
class ApiSettings:
    """Body caps and upkeep cadence of the API server.

    `tick_interval` is how often the app calls `ControlService.tick()` (nonce and limiter
    pruning, lapsed join keys); None leaves upkeep to the caller.
    """

    max_body_bytes: int = attrs.field(default=DEFAULT_BODY_LIMIT, validator=_positive)
    max_document_bytes: int = attrs.field(default=DOCUMENT_BODY_LIMIT, validator=_positive)
    tick_interval: float | None = 5.0
