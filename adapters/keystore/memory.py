"""In-memory key store: for tests and for one-shot commands that must not persist keys.

The one rule: it keeps the same contract as the persistent stores (missing → `KeyNotFound`,
copies in and out, wipe on close), so code tested against it behaves the same on a real store.
"""

from __future__ import annotations

from rustynet.ports.keystore import (
    KeyNotFound,
    KeystoreDescription,
    KeystoreFinding,
    KeystoreUnavailable,
    validate_key_name,
    validate_secret,
)


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


class MemoryKeystore:
    """Secrets in a dict of private `bytearray`s; nothing survives the process."""

    def __init__(self) -> None:
        self._secrets: dict[str, bytearray] = {}
        self._closed = False

    def open(self) -> None:
        """Nothing to check."""
        self._live()

    def check(self) -> tuple[KeystoreFinding, ...]:
        """Memory has no permissions to check."""
        return ()

    def describe(self) -> KeystoreDescription:
        """Kind and what it protects."""
        return KeystoreDescription(
            kind="memory",
            location="process memory",
            protects_against=("keys on disk: nothing is written",),
            does_not_protect_against=("restarts: every key is lost when the process ends",),
        )

    def put(self, name: str, secret: bytes | bytearray) -> None:
        """Store a private copy of `secret`."""
        self._live()
        validate_key_name(name)
        validate_secret(secret)
        old = self._secrets.get(name)
        self._secrets[name] = bytearray(secret)
        if old is not None:
            _wipe(old)

    def get(self, name: str) -> bytearray:
        """A fresh copy of the secret; `KeyNotFound` when absent."""
        self._live()
        validate_key_name(name)
        try:
            return bytearray(self._secrets[name])
        except KeyError:
            raise KeyNotFound(f"no key {name!r} in the memory key store") from None

    def delete(self, name: str) -> None:
        """Remove and wipe the secret; `KeyNotFound` when absent."""
        self._live()
        validate_key_name(name)
        try:
            secret = self._secrets.pop(name)
        except KeyError:
            raise KeyNotFound(f"no key {name!r} in the memory key store") from None
        _wipe(secret)

    def exists(self, name: str) -> bool:
        """True when the name is stored."""
        self._live()
        return validate_key_name(name) in self._secrets

    def close(self) -> None:
        """Wipe every secret."""
        for secret in self._secrets.values():
            _wipe(secret)
        self._secrets.clear()
        self._closed = True

    def _live(self) -> None:
        if self._closed:
            raise KeystoreUnavailable("the memory key store was closed")
