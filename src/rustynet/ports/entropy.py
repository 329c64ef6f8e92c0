"""Entropy port: the only way the core gets randomness."""

from __future__ import annotations

from typing import Protocol


class Entropy(Protocol):
    """Cryptographically secure random bytes."""

    def token_bytes(self, n: int) -> bytes:
        """Return `n` bytes from a CSPRNG. Never fails silently: raises if none is available."""
        ...
