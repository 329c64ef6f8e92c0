"""Randomness as the domain needs it: the `Entropy` Protocol, the only way the core gets random
bytes (keys, nonces, token ids, challenges).

The domain defines what it consumes, so the dependency points inward: `rustynet.ports.entropy`
names this Protocol for the use cases, and `adapters/entropy.py` (`OsEntropy`) implements it.
"""

from __future__ import annotations

from typing import Protocol


class Entropy(Protocol):
    """Cryptographically secure random bytes."""

    def token_bytes(self, n: int) -> bytes:
        """Return `n` bytes from a CSPRNG. Never fails silently: raises if none is available."""
        ...
