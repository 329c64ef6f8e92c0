"""Deterministic test doubles that satisfy the core's ports structurally (no inheritance)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta


class CountingEntropy:
    """Deterministic, never-repeating bytes (a test double satisfying the Entropy port)."""

    def __init__(self) -> None:
        self.calls = 0

    def token_bytes(self, n: int) -> bytes:
        """SHA-256 of a counter, cut to n bytes."""
        self.calls += 1
        return hashlib.sha256(self.calls.to_bytes(8, "big")).digest()[:n]


class FakeClock:
    """A settable clock (a test double satisfying the Clock port): set `current` or `advance`."""

    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta
