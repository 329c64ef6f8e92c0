"""Encrypted-file key store: the fallback when no real OS keyring exists (servers, headless).

The one rule: a key file is trusted only if the storage is private to us (directory 0700, file
0600, our uid, no symlinks; checked at `open()` and on every read, never repaired) AND its
whole header authenticates with the key derived from the passphrase under parameters no
lower than the floor. Downgraded parameters are refused before any derivation runs.

Layout: one file per key, `<directory>/<name>`, so each key is replaced atomically on its own,
a damaged file loses one key rather than all, and there is no read-modify-write of a shared
file. The cost: key names (not contents) are visible as file names.

File format (big-endian), all of the header is AEAD associated data:

    magic "RNKS" | version u8 = 1 | kdf u8 = 1 (Argon2id) | aead u8 = 1 (ChaCha20-Poly1305)
    | memory KiB u32 | iterations u32 | lanes u32 | salt 16 B | nonce 12 B
    | name length u8 | name (ascii)    || ciphertext + 16-byte tag

Every write draws a fresh 16-byte salt and derives a fresh 32-byte key with Argon2id (floor
m = 64 MiB, t = 3, p = 4; about 0.15 s), so a nonce is never reused under one key. The key
name in the header is checked against the name asked for, so files cannot be swapped.

Where the passphrase comes from (see `passphrase.py`, `PassphraseSource`; the operator doc is
docs/threat-model/key-custody.md, section 4): in order of preference
1. a systemd credential: `$CREDENTIALS_DIRECTORY/rustynet-keystore-passphrase`, set up with
   `LoadCredentialEncrypted=` (TPM-sealed where available) — the passphrase never sits in
   plain text on disk and only the unit can read it;
2. a file descriptor the supervisor passes (`--passphrase-fd N`);
3. a passphrase file (0600/0400, ours, not a symlink), kept OUTSIDE the state directory —
   weaker: a root-level attacker or a backup that takes both files gets the keys, and doctor
   says so;
4. an interactive prompt (getpass) for operators at a terminal.
Never argv (visible in /proc/*/cmdline) and never an environment variable (inherited by
children, dumped in crash reports): `RUSTYNET_PASSPHRASE`-style variables are refused.

This store takes ownership of the passphrase `bytearray` and wipes it in `close()`; it must
keep it until then because every write derives a new key under a new salt. Derived keys are
cached per (salt, parameters) in wipeable buffers. Python cannot promise that no copy survives
(the KDF and AEAD libraries return immutable bytes); we keep lifetimes short and wipe what we
own.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from rustynet.adapters.keystore import files
from rustynet.adapters.support.private_file import TEMP_PREFIX, write_private_at

from rustynet.ports.keystore import (
    KeyNotFound,
    KeystoreDescription,
    KeystoreError,
    KeystoreFinding,
    KeystoreIntegrityError,
    KeystorePermissionError,
    KeystoreUnavailable,
    validate_key_name,
    validate_secret,
)

MAGIC: Final = b"RNKS"
VERSION: Final = 1
KDF_ARGON2ID: Final = 1
AEAD_CHACHA20_POLY1305: Final = 1
SALT_SIZE: Final = 16
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32

_FIXED = struct.Struct(">4sBBBIII16s12sB")
FIXED_HEADER_SIZE: Final = _FIXED.size


@attrs.frozen
class KdfParams:
    """Argon2id cost parameters as stored in a header."""

    memory_kib: int
    iterations: int
    lanes: int


FLOOR: Final = KdfParams(memory_kib=64 * 1024, iterations=3, lanes=4)
"""Lowest parameters accepted on read and used on write (docs/threat-model/key-custody.md)."""

CEILING: Final = KdfParams(memory_kib=4 * 1024 * 1024, iterations=64, lanes=64)
"""Highest parameters accepted on read: a planted header must not make us allocate 16 GiB."""


def check_params(params: KdfParams, where: str) -> None:
    """Refuse parameters below the floor or above the ceiling (before deriving anything)."""
    for field in ("memory_kib", "iterations", "lanes"):
        value, low, high = (getattr(p, field) for p in (params, FLOOR, CEILING))
        if value < low:
            raise KeystoreIntegrityError(
                f"{where}: Argon2id {field}={value} is below the floor {low}; refusing a "
                "downgraded key file (restore it from backup)"
            )
        if value > high:
            raise KeystoreIntegrityError(
                f"{where}: Argon2id {field}={value} is above the ceiling {high}; refusing it"
            )


@attrs.frozen
class Header:
    """A parsed key-file header; `raw` is exactly the bytes authenticated as associated data."""

    params: KdfParams
    salt: bytes
    nonce: bytes
    name: str
    raw: bytes

    def encode(self) -> bytes:
        """Serialize (used when writing)."""
        name = self.name.encode("ascii")
        return (
            _FIXED.pack(
                MAGIC,
                VERSION,
                KDF_ARGON2ID,
                AEAD_CHACHA20_POLY1305,
                self.params.memory_kib,
                self.params.iterations,
                self.params.lanes,
                self.salt,
                self.nonce,
                len(name),
            )
            + name
        )

    @classmethod
    def build(cls, params: KdfParams, salt: bytes, nonce: bytes, name: str) -> Header:
        """A header for a new write."""
        draft = cls(params, salt, nonce, name, b"")
        return attrs.evolve(draft, raw=draft.encode())

    @classmethod
    def parse(cls, data: bytes, where: str) -> tuple[Header, bytes]:
        """Split a file into (header, ciphertext); refuse anything unknown or downgraded."""
        if len(data) < FIXED_HEADER_SIZE:
            raise KeystoreIntegrityError(f"{where}: truncated key file")
        magic, version, kdf, aead, m, t, p, salt, nonce, name_len = _FIXED.unpack_from(data)
        if magic != MAGIC:
            raise KeystoreIntegrityError(f"{where}: not a Rustynet key file (bad magic)")
        if version != VERSION:
            raise KeystoreIntegrityError(f"{where}: unsupported key file version {version}")
        if kdf != KDF_ARGON2ID or aead != AEAD_CHACHA20_POLY1305:
            raise KeystoreIntegrityError(f"{where}: unsupported algorithms kdf={kdf} aead={aead}")
        params = KdfParams(memory_kib=m, iterations=t, lanes=p)
        check_params(params, where)
        end = FIXED_HEADER_SIZE + name_len
        if len(data) < end + TAG_SIZE + 1:
            raise KeystoreIntegrityError(f"{where}: truncated key file")
        try:
            name = data[FIXED_HEADER_SIZE:end].decode("ascii")
        except UnicodeDecodeError as exc:
            raise KeystoreIntegrityError(f"{where}: key name in header is not ascii") from exc
        return cls(params, salt, nonce, name, data[:end]), data[end:]


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


class FileKeystore:
    """One Argon2id + ChaCha20-Poly1305 encrypted file per key in a private directory.

    `passphrase` may be None for inspection only (doctor): `check()`/`describe()`/`exists()`
    work, `get()`/`put()` raise `KeystoreUnavailable`.
    """

    def __init__(
        self,
        directory: Path,
        passphrase: bytearray | None,
        *,
        params: KdfParams = FLOOR,
        uid: int | None = None,
    ) -> None:
        if passphrase is not None and (not isinstance(passphrase, bytearray) or not passphrase):
            raise KeystoreError("the key-file passphrase must be a non-empty bytearray")
        check_params(params, "key store settings")
        self._directory = Path(directory)
        self._passphrase = passphrase
        self._params = params
        self._uid = os.geteuid() if uid is None else uid
        self._derived: dict[tuple[bytes, KdfParams], bytearray] = {}
        self._closed = False

    @property
    def directory(self) -> Path:
        """The key directory."""
        return self._directory

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory 0700 if absent (its parent must exist), then refuse to start
        on any finding of severity error."""
        self._live()
        if not self._directory.parent.is_dir():
            raise KeystoreUnavailable(
                f"{self._directory.parent}: state directory does not exist (create it first)"
            )
        files.create_private_dir(self._directory)
        errors = [f for f in self.check() if f.severity == "error"]
        if errors:
            raise KeystorePermissionError(errors[0])

    def check(self) -> tuple[KeystoreFinding, ...]:
        """Directory and every entry: type, mode, owner, symlinks. Changes nothing."""
        findings: list[KeystoreFinding] = []
        parent = self._directory.parent
        try:
            pst = parent.stat()
        except FileNotFoundError:
            return (
                KeystoreFinding(
                    str(parent),
                    "state directory does not exist yet (create it, e.g. systemd StateDirectory=)",
                    severity="warning",
                ),
            )
        if pst.st_mode & 0o022 and not pst.st_mode & 0o1000:
            findings.append(
                KeystoreFinding(
                    str(parent),
                    "state directory is writable by other users (they could swap the key "
                    "directory)",
                    f"{pst.st_mode & 0o7777:04o}",
                    "not group/world-writable",
                )
            )
        try:
            dst = os.lstat(self._directory)
        except FileNotFoundError:
            findings.append(
                KeystoreFinding(
                    str(self._directory),
                    "key directory does not exist yet (created 0700 at first start)",
                    severity="warning",
                )
            )
            return tuple(findings)
        dir_problems = files.dir_findings(self._directory, dst, uid=self._uid)
        findings.extend(dir_problems)
        if any(f.problem in ("is a symlink", "is not a directory") for f in dir_problems):
            return tuple(findings)
        with os.scandir(self._directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = self._directory / entry.name
                findings.extend(
                    files.file_findings(path, entry.stat(follow_symlinks=False), uid=self._uid)
                )
                if not entry.name.startswith(TEMP_PREFIX) and not _valid_name(entry.name):
                    findings.append(
                        KeystoreFinding(
                            str(path), "unexpected file in the key directory", severity="warning"
                        )
                    )
        return tuple(findings)

    def describe(self) -> KeystoreDescription:
        """What this store is and what it protects."""
        return KeystoreDescription(
            kind="encrypted-file",
            location=str(self._directory),
            protects_against=(
                "disk, backup or image theft without the passphrase (Argon2id "
                f"m={self._params.memory_kib} KiB t={self._params.iterations} "
                f"p={self._params.lanes}, ChaCha20-Poly1305 over the whole header)",
                "other local users (directory 0700, files 0600, owner checked on every read)",
                "tampered, swapped or parameter-downgraded key files (refused)",
            ),
            does_not_protect_against=(
                "root on this host, or anyone who can read the passphrase source",
                "memory disclosure of the running process",
            ),
            notes=("one file per key; key names are visible as file names",),
        )

    def close(self) -> None:
        """Wipe the passphrase and every derived key."""
        if self._passphrase is not None:
            _wipe(self._passphrase)
            self._passphrase = None
        for key in self._derived.values():
            _wipe(key)
        self._derived.clear()
        self._closed = True

    # -- secrets ---------------------------------------------------------------------------

    def put(self, name: str, secret: bytes | bytearray) -> None:
        """Encrypt under a fresh salt and nonce and replace the file atomically."""
        self._live()
        validate_key_name(name)
        validate_secret(secret)
        header = Header.build(
            self._params, secrets.token_bytes(SALT_SIZE), secrets.token_bytes(NONCE_SIZE), name
        )
        key = self._key_for(header)
        ciphertext = ChaCha20Poly1305(key).encrypt(header.nonce, secret, header.raw)
        with self._dir() as dir_fd:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                # Replacing a loose or planted file would silently hide the problem: refuse.
                problems = files.file_findings(self._directory / name, st, uid=self._uid)
                if problems:
                    raise KeystorePermissionError(problems[0])
            write_private_at(dir_fd, name, header.raw + ciphertext)

    def get(self, name: str) -> bytearray:
        """Check, read, refuse downgrades and tampering, decrypt."""
        self._live()
        validate_key_name(name)
        where = str(self._directory / name)
        with self._dir() as dir_fd:
            try:
                data = files.read_private_file(dir_fd, self._directory, name, uid=self._uid)
            except FileNotFoundError:
                raise KeyNotFound(f"no key {name!r} in {self._directory}") from None
        header, ciphertext = Header.parse(data, where)
        if header.name != name:
            raise KeystoreIntegrityError(
                f"{where}: file holds key {header.name!r}, not {name!r} (swapped file?)"
            )
        key = self._key_for(header)
        try:
            plain = ChaCha20Poly1305(key).decrypt(header.nonce, ciphertext, header.raw)
        except InvalidTag:
            raise KeystoreIntegrityError(
                f"{where}: authentication failed: wrong passphrase, or the file was modified"
            ) from None
        return bytearray(plain)

    def delete(self, name: str) -> None:
        """Remove the file and fsync the directory; `KeyNotFound` when absent."""
        self._live()
        validate_key_name(name)
        with self._dir() as dir_fd:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                raise KeyNotFound(f"no key {name!r} in {self._directory}") from None
            os.fsync(dir_fd)

    def exists(self, name: str) -> bool:
        """True when a file of that name is in the (checked) directory."""
        self._live()
        validate_key_name(name)
        with self._dir() as dir_fd:
            try:
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
        return True

    # -- internals -------------------------------------------------------------------------

    @contextmanager
    def _dir(self) -> Iterator[int]:
        try:
            fd = files.open_private_dir(self._directory, uid=self._uid)
        except FileNotFoundError:
            raise KeystoreUnavailable(
                f"{self._directory}: key directory does not exist (was the store opened?)"
            ) from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _key_for(self, header: Header) -> bytearray:
        if self._passphrase is None:
            raise KeystoreUnavailable(
                "the key store was opened without a passphrase (inspection only)"
            )
        cache_key = (header.salt, header.params)
        cached = self._derived.get(cache_key)
        if cached is None:
            kdf = Argon2id(
                salt=header.salt,
                length=KEY_SIZE,
                iterations=header.params.iterations,
                lanes=header.params.lanes,
                memory_cost=header.params.memory_kib,
            )
            # derive() takes any buffer; typed as bytes, so no copy is made here
            cached = bytearray(kdf.derive(self._passphrase))  # type: ignore[arg-type]
            self._derived[cache_key] = cached
        return cached

    def _live(self) -> None:
        if self._closed:
            raise KeystoreUnavailable("the file key store was closed")


def _valid_name(name: str) -> bool:
    try:
        validate_key_name(name)
    except KeystoreError:
        return False
    return True
