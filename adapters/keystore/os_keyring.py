"""OS key store through `keyring` (Secret Service, macOS Keychain, Windows Credential Locker).

The one rule: only a real backend counts. `keyring` falls back silently to backends that store
nothing (`fail`, `null`) or store secrets in plain or weakly protected files (`keyrings.alt`);
each of those makes this store *unavailable* (`KeystoreUnavailable` naming the backend), so the
composition root falls back to the encrypted file store instead.

Quirks handled here: on a headless host `keyring` selects the `fail` backend (every call
raises `NoKeyringError`); some backends read a missing entry back as "" rather than None.
Both None and "" are `KeyNotFound`, never an empty key. `keyring` stores strings, so secrets
are stored as `rnks1:` + base64; anything else under our service name is refused as corrupt.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import keyring
import keyring.errors
from keyring.backend import KeyringBackend
from keyring.backends.chainer import ChainerBackend

from rustynet.ports.keystore import (
    KeyNotFound,
    KeystoreDescription,
    KeystoreError,
    KeystoreFinding,
    KeystoreIntegrityError,
    KeystoreUnavailable,
    validate_key_name,
    validate_secret,
)

DEFAULT_SERVICE: Final = "rustynet"
_PREFIX: Final = "rnks1:"
_REFUSED: Final = {
    "keyring.backends.fail.Keyring": "stores nothing (no OS key store on this host)",
    "keyring.backends.null.Keyring": "stores nothing",
}
_REFUSED_MODULES: Final = {
    "keyrings.alt": "a file-based keyring (plain text or weakly encrypted), not an OS key store",
}


def backend_name(backend: KeyringBackend) -> str:
    """`module.Class` of a backend, as doctor prints it."""
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def refusal_reason(backend: KeyringBackend) -> str | None:
    """Why `backend` does not count as a real OS key store, or None if it does."""
    if isinstance(backend, ChainerBackend):
        chained = list(ChainerBackend.backends)
        if not chained:
            return "a chainer with no backends"
        for inner in chained:
            reason = refusal_reason(inner)
            if reason is not None:
                return f"chains {backend_name(inner)}, which {reason}"
        return None
    name = backend_name(backend)
    if name in _REFUSED:
        return _REFUSED[name]
    for module, reason in _REFUSED_MODULES.items():
        if name == module or name.startswith(module + "."):
            return reason
    return None


class OsKeyringKeystore:
    """Secrets in the OS key store under one service name, one entry per key name."""

    def __init__(self, *, service: str = DEFAULT_SERVICE, backend: KeyringBackend | None = None):
        self._service = service
        self._explicit = backend
        self._closed = False

    def backend(self) -> KeyringBackend:
        """The backend in use; raises `KeystoreUnavailable` unless it is a real OS key store."""
        if self._closed:
            raise KeystoreUnavailable("the OS key store adapter was closed")
        backend = self._explicit if self._explicit is not None else keyring.get_keyring()
        reason = refusal_reason(backend)
        if reason is not None:
            raise KeystoreUnavailable(
                f"OS key store unavailable: keyring backend {backend_name(backend)} {reason}"
            )
        return backend

    def open(self) -> None:
        """Refuse unless a real backend is selected."""
        self.backend()

    def check(self) -> tuple[KeystoreFinding, ...]:
        """The backend choice is the only thing to check."""
        try:
            self.backend()
        except KeystoreUnavailable as exc:
            return (KeystoreFinding(f"keyring service {self._service!r}", str(exc)),)
        return ()

    def describe(self) -> KeystoreDescription:
        """Kind, backend and what it protects."""
        try:
            where = backend_name(self.backend())
        except KeystoreUnavailable as exc:
            where = f"unavailable ({exc})"
        return KeystoreDescription(
            kind="os-keyring",
            location=f"{where}, service {self._service!r}",
            protects_against=(
                "disk theft and other local users, as far as the OS key store does "
                "(typically encrypted with the login secret)",
            ),
            does_not_protect_against=(
                "other processes of the same user while the key store is unlocked",
                "root on this host",
            ),
        )

    def put(self, name: str, secret: bytes | bytearray) -> None:
        """Store base64 text under (service, name)."""
        validate_key_name(name)
        validate_secret(secret)
        backend = self.backend()
        text = _PREFIX + base64.b64encode(secret).decode("ascii")
        try:
            backend.set_password(self._service, name, text)
        except keyring.errors.NoKeyringError as exc:
            raise KeystoreUnavailable(f"OS key store unavailable: {exc}") from exc
        except keyring.errors.KeyringError as exc:
            raise KeystoreError(f"OS key store refused to store {name!r}: {exc}") from exc

    def get(self, name: str) -> bytearray:
        """Decode the stored text; None or "" is `KeyNotFound`."""
        validate_key_name(name)
        text = self._read(name)
        if not text:
            raise KeyNotFound(f"no key {name!r} in the OS key store (service {self._service!r})")
        if not text.startswith(_PREFIX):
            raise KeystoreIntegrityError(
                f"OS key store entry {self._service}/{name} is not a Rustynet key"
            )
        try:
            secret = bytearray(base64.b64decode(text[len(_PREFIX) :], validate=True))
        except (binascii.Error, ValueError) as exc:
            raise KeystoreIntegrityError(
                f"OS key store entry {self._service}/{name} is not valid base64"
            ) from exc
        if not secret:
            raise KeyNotFound(f"OS key store entry {self._service}/{name} is empty")
        return secret

    def delete(self, name: str) -> None:
        """Remove the entry; `KeyNotFound` when absent."""
        validate_key_name(name)
        if not self._read(name):
            raise KeyNotFound(f"no key {name!r} in the OS key store (service {self._service!r})")
        try:
            self.backend().delete_password(self._service, name)
        except keyring.errors.PasswordDeleteError as exc:
            raise KeyNotFound(f"no key {name!r} in the OS key store: {exc}") from exc
        except keyring.errors.KeyringError as exc:
            raise KeystoreError(f"OS key store refused to delete {name!r}: {exc}") from exc

    def exists(self, name: str) -> bool:
        """True when a non-empty entry exists."""
        validate_key_name(name)
        return bool(self._read(name))

    def close(self) -> None:
        """Nothing is cached here; later calls raise `KeystoreUnavailable`."""
        self._closed = True

    def _read(self, name: str) -> str | None:
        backend = self.backend()
        try:
            return backend.get_password(self._service, name)
        except keyring.errors.NoKeyringError as exc:
            raise KeystoreUnavailable(f"OS key store unavailable: {exc}") from exc
        except keyring.errors.KeyringError as exc:
            raise KeystoreError(f"OS key store failed reading {name!r}: {exc}") from exc
