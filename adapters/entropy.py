"""Operating-system entropy adapter."""

from __future__ import annotations

import secrets


class OsEntropy:
    """Entropy from the OS CSPRNG (getrandom(2) via `secrets`)."""

    def token_bytes(self, n: int) -> bytes:
        """Return `n` random bytes."""
        if n <= 0:
            raise ValueError("n must be positive")
        return secrets.token_bytes(n)
