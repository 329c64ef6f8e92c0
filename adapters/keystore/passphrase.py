"""Where the key-file passphrase comes from: credentials directory, descriptor, file, prompt.

The one rule: never argv, never the environment. A variable that looks like a Rustynet
passphrase (`RUSTYNET_*PASS*`) is refused outright, so a deployment that tries it fails loudly
instead of leaking the passphrase to every child process and crash report.

Preference when nothing is given explicitly: systemd credential
(`$CREDENTIALS_DIRECTORY/rustynet-keystore-passphrase`, ideally `LoadCredentialEncrypted=`),
then a passphrase file, then an interactive prompt when stdin is a terminal. An explicit
`--passphrase-fd` wins over all of them.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

import attrs
from rustynet.adapters.keystore import files

from rustynet.ports.keystore import (
    KeystoreError,
    KeystoreFinding,
    KeystoreUnavailable,
    PassphraseDescription,
)

CREDENTIAL_NAME: Final = "rustynet-keystore-passphrase"
_ENV_PASSPHRASE: Final = re.compile(r"RUSTYNET_\w*PASS\w*", re.IGNORECASE)

SourceKind = Literal["fd", "credential", "file", "prompt", "none"]


class PassphraseRefused(KeystoreError):  # noqa: N818 - names the refusal, like KeyNotFound
    """The passphrase was offered through a channel we refuse (environment, empty)."""


def refuse_environment(environ: Mapping[str, str]) -> None:
    """Raise `PassphraseRefused` if any variable looks like a Rustynet passphrase."""
    offending = sorted(k for k in environ if _ENV_PASSPHRASE.fullmatch(k))
    if offending:
        raise PassphraseRefused(
            f"environment variable {offending[0]} is set: Rustynet never reads a passphrase "
            "from the environment (children inherit it, crash reports dump it); unset it and "
            "use a systemd credential, --passphrase-fd or a 0600 passphrase file"
        )


def _strip_newline(buf: bytearray) -> bytearray:
    if buf.endswith(b"\r\n"):
        del buf[-2:]
    elif buf.endswith(b"\n"):
        del buf[-1:]
    if not buf:
        raise PassphraseRefused("the passphrase is empty")
    return buf


@attrs.frozen
class PassphraseSource:
    """One place to read the passphrase from. Building it reads nothing; `read()` does."""

    kind: SourceKind
    path: Path | None = None
    fd: int | None = None

    @classmethod
    def from_fd(cls, fd: int) -> PassphraseSource:
        """A descriptor the supervisor passed (read to EOF once, then closed)."""
        return cls("fd", fd=fd)

    @classmethod
    def from_credentials(cls, directory: Path, name: str = CREDENTIAL_NAME) -> PassphraseSource:
        """A systemd credential `<directory>/<name>`."""
        return cls("credential", path=Path(directory) / name)

    @classmethod
    def from_file(cls, path: Path) -> PassphraseSource:
        """A private passphrase file (weaker: plain text on disk)."""
        return cls("file", path=Path(path))

    @classmethod
    def prompt(cls) -> PassphraseSource:
        """Ask on the terminal."""
        return cls("prompt")

    @classmethod
    def none(cls) -> PassphraseSource:
        """No source is available: a store can be inspected, not opened."""
        return cls("none")

    @classmethod
    def resolve(
        cls,
        *,
        fd: int | None,
        file: Path | None,
        environ: Mapping[str, str],
        interactive: bool,
    ) -> PassphraseSource:
        """Pick the source by the documented preference; refuses passphrase env variables."""
        refuse_environment(environ)
        if fd is not None:
            return cls.from_fd(fd)
        cred_dir = environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).exists():
            return cls.from_credentials(Path(cred_dir))
        if file is not None:
            return cls.from_file(file)
        return cls.prompt() if interactive else cls.none()

    @property
    def location(self) -> str:
        """Human-readable origin."""
        if self.kind == "fd":
            return f"file descriptor {self.fd}"
        if self.path is not None:
            return str(self.path)
        return "terminal prompt" if self.kind == "prompt" else "none"

    def check(self, *, uid: int | None = None) -> tuple[KeystoreFinding, ...]:
        """Problems with a file-based source (mode, owner, symlink); reads nothing."""
        if self.path is None:
            return ()
        me = os.geteuid() if uid is None else uid
        # systemd may leave credential files owned by root; only the unit can reach them.
        return tuple(
            files.stat_private_path(self.path, uid=me, root_owner_ok=self.kind == "credential")
        )

    def read(self, *, uid: int | None = None) -> bytearray:
        """Read the passphrase into a new bytearray the caller owns (and hands to the store)."""
        me = os.geteuid() if uid is None else uid
        if self.kind == "fd" and self.fd is not None:
            buf = bytearray()
            try:
                while chunk := os.read(self.fd, 4096):
                    buf += chunk
                    if len(buf) > files.MAX_FILE_SIZE:
                        raise PassphraseRefused("passphrase descriptor gave too much data")
            finally:
                os.close(self.fd)
            return _strip_newline(buf)
        if self.kind in ("credential", "file") and self.path is not None:
            try:
                data = files.read_private_path(
                    self.path, uid=me, root_owner_ok=self.kind == "credential"
                )
            except FileNotFoundError:
                raise KeystoreUnavailable(f"{self.path}: passphrase file does not exist") from None
            except OSError as exc:  # EACCES and friends: say what, where and whom it concerns
                raise KeystoreUnavailable(
                    f"{self.path}: cannot read the passphrase file ({exc.strerror}); it must be "
                    f"a 0600/0400 file owned by uid {me}, the user this program runs as"
                ) from None
            return _strip_newline(bytearray(data))
        if self.kind == "prompt":
            return _strip_newline(
                bytearray(getpass.getpass("Rustynet key store passphrase: ").encode("utf-8"))
            )
        raise KeystoreUnavailable(
            "no passphrase source: use a systemd credential "
            f"(${{CREDENTIALS_DIRECTORY}}/{CREDENTIAL_NAME}), --passphrase-fd, "
            "--passphrase-file or run at a terminal"
        )

    def describe(self, *, state_dir: Path | None = None) -> PassphraseDescription:
        """What this choice protects against, and what not (for doctor)."""
        if self.kind == "credential":
            return PassphraseDescription(
                kind="credential",
                location=self.location,
                unattended=True,
                weaker=False,
                protects_against=(
                    "other local users and child processes (only this unit can read it)",
                    "disk theft when the credential is LoadCredentialEncrypted= (TPM-sealed "
                    "where available)",
                ),
                does_not_protect_against=("root on the running host",),
            )
        if self.kind == "fd":
            return PassphraseDescription(
                kind="fd",
                location=self.location,
                unattended=True,
                weaker=False,
                protects_against=("argv/environment leaks; nothing is stored by Rustynet",),
                does_not_protect_against=(
                    "whatever the supervisor that supplies the descriptor exposes",
                ),
            )
        if self.kind == "file":
            weaker_notes = [
                "disk or backup theft that takes the passphrase file with the key files",
                "root on this host",
            ]
            if state_dir is not None and _inside(self.path, state_dir):
                weaker_notes.insert(
                    0, "it is INSIDE the state directory: one copy of that directory gives both"
                )
            return PassphraseDescription(
                kind="file",
                location=self.location,
                unattended=True,
                weaker=True,
                protects_against=("other local users (file must be 0600/0400 and ours)",),
                does_not_protect_against=tuple(weaker_notes),
            )
        if self.kind == "prompt":
            return PassphraseDescription(
                kind="prompt",
                location=self.location,
                unattended=False,
                weaker=False,
                protects_against=("disk theft: the passphrase is only in the operator's head",),
                does_not_protect_against=("unattended restarts (someone must type it)",),
            )
        return PassphraseDescription(
            kind="none",
            location="none",
            unattended=False,
            weaker=False,
            does_not_protect_against=("nothing can open the encrypted key files unattended",),
        )


def _inside(path: Path | None, directory: Path) -> bool:
    if path is None:
        return False
    try:
        Path(path).absolute().relative_to(Path(directory).absolute())
    except ValueError:
        return False
    return True
