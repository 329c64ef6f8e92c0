"""Choosing and opening the key store: the only place that names the keystore adapters.

The one rule: `auto` uses the OS key store only when `keyring` has a real backend, else the
encrypted file store; and once a key directory exists it keeps using it, so a keyring that
appears later never hides the keys a node already has (a missing identity key stops start-up,
see `rustynet.ports.keystore.load_or_create`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

import attrs

from rustynet.adapters.keystore import files
from rustynet.adapters.keystore.encrypted_file import FileKeystore
from rustynet.adapters.keystore.memory import MemoryKeystore
from rustynet.adapters.keystore.passphrase import PassphraseSource
from rustynet.adapters.support.config_file import ConfigFileRefused
from rustynet.application.doctor import KeystoreChoice
from rustynet.ports.keystore import Keystore, KeystoreError, KeystoreUnavailable

KeystoreKind = Literal["auto", "os", "file", "memory"]
DEFAULT_STATE_DIR: Final = Path("/var/lib/rustynet")
DEFAULT_SERVICE: Final = "rustynet"  # = the OS keyring adapter's (not imported here: see _os_store)


@attrs.frozen
class KeystoreSettings:
    """Where keys live and where the key-file passphrase comes from (never argv/env)."""

    state_dir: Path = DEFAULT_STATE_DIR
    kind: KeystoreKind = "auto"
    passphrase_fd: int | None = None
    passphrase_file: Path | None = None
    service: str = DEFAULT_SERVICE

    @property
    def keys_dir(self) -> Path:
        """The encrypted key directory, `<state_dir>/keys`."""
        return self.state_dir / "keys"


def _os_store(settings: KeystoreSettings) -> tuple[Keystore, str | None]:
    # Imported here: `keyring` (and importlib_metadata, jaraco...) costs a daemon that uses the
    # file store ~3 MB of RSS and start-up time for nothing.
    from rustynet.adapters.keystore.os_keyring import OsKeyringKeystore  # noqa: PLC0415

    store = OsKeyringKeystore(service=settings.service)
    try:
        store.open()
    except KeystoreUnavailable as exc:
        return store, str(exc)
    return store, None


def resolve_passphrase(
    settings: KeystoreSettings, *, environ: Mapping[str, str], interactive: bool
) -> PassphraseSource:
    """The passphrase source by the documented preference (refuses passphrase env vars)."""
    return PassphraseSource.resolve(
        fd=settings.passphrase_fd,
        file=settings.passphrase_file,
        environ=environ,
        interactive=interactive,
    )


def choose_keystore(
    settings: KeystoreSettings,
    *,
    environ: Mapping[str, str],
    interactive: bool,
) -> KeystoreChoice:
    """Pick the store without reading any secret (doctor, and the first step of build)."""
    kind = settings.kind
    if kind == "memory":
        return KeystoreChoice(MemoryKeystore(), kind, "asked for the in-memory store")
    if kind == "auto" and settings.keys_dir.exists():
        reason = f"{settings.keys_dir} exists: keep using the encrypted file store"
    elif kind in ("auto", "os"):
        os_store, os_error = _os_store(settings)
        if kind == "os":
            if os_error is not None:
                return KeystoreChoice(None, kind, "asked for the OS key store", error=os_error)
            return KeystoreChoice(os_store, kind, "asked for the OS key store")
        if os_error is None:
            return KeystoreChoice(os_store, kind, "a real OS key store backend is available")
        reason = f"{os_error}; falling back to the encrypted file store"
    else:
        reason = "asked for the encrypted file store"
    store = FileKeystore(settings.keys_dir, None)
    try:
        source = resolve_passphrase(settings, environ=environ, interactive=interactive)
    except KeystoreError as exc:
        return KeystoreChoice(store, kind, reason, passphrase_error=str(exc))
    return KeystoreChoice(
        store,
        kind,
        reason,
        passphrase=source.describe(state_dir=settings.state_dir),
        passphrase_findings=source.check(),
    )


def build_keystore(
    settings: KeystoreSettings,
    *,
    environ: Mapping[str, str] | None = None,
    interactive: bool | None = None,
) -> Keystore:
    """Choose, read the passphrase if needed, and `open()` the store (which checks it)."""
    env = os.environ if environ is None else environ
    tty = sys.stdin.isatty() if interactive is None else interactive
    choice = choose_keystore(settings, environ=env, interactive=tty)
    if choice.keystore is None:
        raise KeystoreUnavailable(choice.error or choice.reason)
    store: Keystore = choice.keystore
    if isinstance(store, FileKeystore):
        source = resolve_passphrase(settings, environ=env, interactive=tty)
        store = FileKeystore(settings.keys_dir, source.read())
    store.open()
    return store


def check_private_key_file(path: Path, *, uid: int | None = None) -> None:
    """Refuse a TLS private key that a config names unless it is private: a regular file,
    0600 or 0400, owned by us or root (the rule of the key store's files and passphrase file).
    A missing file is left to the TLS loader, which names it."""
    me = os.geteuid() if uid is None else uid
    findings = [
        f
        for f in files.stat_private_path(path, uid=me, allow_read_only=True, root_owner_ok=True)
        if f.problem != "does not exist"
    ]
    if findings:
        raise ConfigFileRefused(f"TLS private key {findings[0].message()}; refusing to serve")
