"""Keystore port: where private keys live between runs (OS keyring, encrypted files, memory).

The one rule: a key that is asked for and not there is an error (`KeyNotFound`), never an empty
or freshly made key. A store hands out secrets as `bytearray`s the caller owns and wipes, and
refuses to run (rather than repair anything) when its storage is not private to us.

Adapters: `rustynet.adapters.keystore.memory.MemoryKeystore`,
`...encrypted_file.FileKeystore`, `...os_keyring.OsKeyringKeystore`; the composition root
(`rustynet.bootstrap.keystores`) picks one and calls `open()` before anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, Literal, Protocol

import attrs

from rustynet.domain.errors import RustynetError

KEY_NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""Key names: lowercase, digits, `.`, `_`, `-`; 1-64 chars; never a path, never hidden."""


class KeystoreError(RustynetError):
    """A key store failed; the message is meant for the operator."""


class KeyNotFound(KeystoreError):  # noqa: N818 - reads as the fact it reports, like KeyError
    """The named key is not in the store (never reported as an empty key)."""


class MissingIdentityKey(KeyNotFound):
    """A key that must exist (an enrolled identity) is gone: stop, never make a new one."""


class KeystoreUnavailable(KeystoreError):  # noqa: N818 - names a state like KeyNotFound
    """The store cannot be used here (no real OS keyring backend, no passphrase, closed)."""


class KeystorePermissionError(KeystoreError):
    """Storage is not private to us (mode, owner, symlink). Nothing was changed."""

    def __init__(self, finding: KeystoreFinding) -> None:
        super().__init__(finding.message())
        self.finding = finding


class KeystoreIntegrityError(KeystoreError):
    """Stored data failed authentication or carries refused parameters (tampered, downgraded,
    wrong passphrase): the store refuses it and leaves the file as it was."""


class InvalidKeyName(KeystoreError):  # noqa: N818 - mirrors ValueError-style naming of facts
    """A key name outside `KEY_NAME_PATTERN` (a programming error in the caller)."""


def validate_key_name(name: str) -> str:
    """Return `name` if it is a valid key name, else raise `InvalidKeyName`."""
    if not isinstance(name, str) or not KEY_NAME_PATTERN.fullmatch(name):
        raise InvalidKeyName(
            f"invalid key name {name!r}: use 1-64 of a-z 0-9 . _ - starting with a letter/digit"
        )
    return name


def validate_secret(secret: bytes | bytearray) -> None:
    """Refuse anything but non-empty bytes (an empty secret would read back as 'no key')."""
    if not isinstance(secret, bytes | bytearray):
        raise KeystoreError("a secret is bytes or bytearray")
    if not secret:
        raise KeystoreError("refusing to store an empty secret")


@attrs.frozen
class KeystoreFinding:
    """One problem a store found with its storage, worded for the operator."""

    path: str
    problem: str
    found: str = ""
    expected: str = ""
    severity: Literal["error", "warning"] = "error"

    def message(self) -> str:
        """`<path>: <problem> (found X, expected Y)`, with the fix left to the operator."""
        parts = [f"{self.path}: {self.problem}"]
        if self.found or self.expected:
            parts.append(f" (found {self.found or '?'}, expected {self.expected or '?'})")
        return "".join(parts)


@attrs.frozen
class KeystoreDescription:
    """What `rustynet doctor` prints about a store: what it is, where, what it protects."""

    kind: str
    location: str
    protects_against: tuple[str, ...] = ()
    does_not_protect_against: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@attrs.frozen
class PassphraseDescription:
    """Where the key-file passphrase would come from, and what that choice protects."""

    kind: Literal["fd", "credential", "file", "prompt", "none"]
    location: str
    unattended: bool
    weaker: bool
    protects_against: tuple[str, ...] = ()
    does_not_protect_against: tuple[str, ...] = ()


class Keystore(Protocol):
    """Named secrets that survive restarts.

    Contract (every adapter passes `tests/contract/test_keystore.py`):
    - Names are checked with `validate_key_name`; a bad name raises `InvalidKeyName`.
    - The constructor does no I/O. The composition root calls `open()` once before use;
      `open()` checks the storage (and may create an empty private location) and raises
      `KeystorePermissionError`, `KeystoreUnavailable` or `KeystoreError`; it never repairs
      modes or owners.
    - `get` returns a fresh `bytearray` the caller owns (and should wipe); a missing key raises
      `KeyNotFound`, never returns an empty buffer.
    - `put` stores a non-empty secret, replacing any previous value atomically.
    - `delete` removes a key; a missing key raises `KeyNotFound`.
    - Every read re-checks storage that the operating system could have changed under us.
    - After `close()` (idempotent) in-memory secrets are wiped and operations raise
      `KeystoreUnavailable`.
    """

    def open(self) -> None:
        """Check (and if absent create) the storage; raise if it is unusable or not private."""
        ...

    def check(self) -> tuple[KeystoreFinding, ...]:
        """Inspect the storage without changing anything; return every problem found."""
        ...

    def describe(self) -> KeystoreDescription:
        """Kind, location and security notes, for `rustynet doctor`."""
        ...

    def put(self, name: str, secret: bytes | bytearray) -> None:
        """Store `secret` under `name`, replacing any previous value atomically."""
        ...

    def get(self, name: str) -> bytearray:
        """Return the secret under `name`; raise `KeyNotFound` when there is none."""
        ...

    def delete(self, name: str) -> None:
        """Remove `name`; raise `KeyNotFound` when there is none."""
        ...

    def exists(self, name: str) -> bool:
        """True when `name` is stored (its content is not checked)."""
        ...

    def close(self) -> None:
        """Wipe secrets held in memory; the store is unusable afterwards."""
        ...


def load_or_create(
    store: Keystore,
    name: str,
    create: Callable[[], bytearray],
    *,
    must_exist: bool,
) -> bytearray:
    """Return the secret under `name`, creating it with `create()` only when allowed.

    `must_exist=True` is for keys whose absence means something went wrong (the identity key
    of an enrolled node): a missing key raises `MissingIdentityKey` instead of silently
    becoming a new identity. The created secret is stored before it is returned.
    """
    try:
        return store.get(name)
    except KeyNotFound:
        if must_exist:
            raise MissingIdentityKey(
                f"key {name!r} should exist but is missing from the key store; refusing to "
                "create a new one (restore it from backup, or re-enroll on purpose)"
            ) from None
    secret = create()
    store.put(name, secret)
    return secret
