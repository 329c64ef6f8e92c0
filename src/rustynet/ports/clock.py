"""Clock port: the only way the core learns the time."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time source."""

    def now(self) -> datetime:
        """Return the current time as a timezone-aware UTC datetime."""
        ...
