"""Reading a configuration file that only its owner (or root) can have written.

The one rule: a configuration file decides where secrets and sockets go (the state directory,
the local socket and the group that may use it, the key store and its passphrase file, the
database, the TLS key, the trusted root), so whoever can write it controls the program. Every
entry point therefore reads its config through `read_config_file`, which refuses, before
parsing a byte of it, a file that:

- is not a regular file (a FIFO, a device, a directory);
- is writable by its group or by others (mode & 0o022), like a passphrase file is refused
  for being readable by them;
- is owned by someone other than the user running the program or root;
- sits in a directory that group or others may write to without the sticky bit (they could
  replace the file under its name).

A leaf module: it imports no other adapter, so both config adapters (`rustynet.adapters.config`
and `rustynet.adapters.relay.config`) may share it (the one exception to the import contract
"adapters do not import each other", named in pyproject.toml).

Symbolic links are followed (configuration management often links /etc files) but every check
is made on what was opened, through the descriptor (`fstat`), and on the real directory. As
with key files nothing is repaired here: the message names the path, what was found and the
command that fixes it. Reading by others is not refused (a config holds no secret, except a
PostgreSQL password, which init writes 0600).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from rustynet.domain.errors import RustynetError

_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_OTHERS_WRITE: Final = stat.S_IWGRP | stat.S_IWOTH


class ConfigFileRefused(RustynetError):  # noqa: N818 - names the refusal, like PassphraseRefused
    """The configuration file is missing, unreadable or not trustworthy (mode, owner, type)."""


def _owner_ok(st: os.stat_result, uid: int) -> bool:
    return st.st_uid in (uid, 0)


def file_problem(path: Path, st: os.stat_result, *, uid: int) -> str | None:
    """Why the opened config file `path` (its fstat result) is not trusted, or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path}: is not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & _OTHERS_WRITE:
        who = (
            "group and others"
            if mode & _OTHERS_WRITE == _OTHERS_WRITE
            else ("its group" if mode & stat.S_IWGRP else "others")
        )
        return (
            f"{path}: writable by {who} (mode {mode:04o}): any of them could redirect the "
            f"program's state, socket and keys; refusing it (fix: chmod go-w {path})"
        )
    if not _owner_ok(st, uid):
        return (
            f"{path}: owned by uid {st.st_uid}; only uid {uid} (running this program) or root "
            f"may own it, another user could rewrite it; refusing it (fix: chown {uid} {path})"
        )
    return None


def directory_problem(directory: Path, st: os.stat_result, *, uid: int) -> str | None:
    """Why the directory holding a config file lets someone else replace it, or None."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & _OTHERS_WRITE and not mode & stat.S_ISVTX:
        return (
            f"{directory}: the directory holding the configuration is writable by others "
            f"(mode {mode:04o}, no sticky bit): they could replace the file; refusing it "
            f"(fix: chmod go-w {directory})"
        )
    if not _owner_ok(st, uid):
        return (
            f"{directory}: the directory holding the configuration is owned by uid "
            f"{st.st_uid}, not by uid {uid} or root: that user could replace the file"
        )
    return None


def read_config_file(path: Path, *, max_size: int, uid: int | None = None) -> bytes:
    """The bytes of config file `path` after the checks above; `ConfigFileRefused` otherwise.

    Messages: `PATH: no such file`, `PATH: cannot read: <reason>`, `PATH: larger than N
    bytes`, or one of the refusals, each naming the fix."""
    me = os.geteuid() if uid is None else uid
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise ConfigFileRefused(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigFileRefused(f"{path}: cannot read: {exc.strerror}") from None
    try:
        problem = file_problem(path, os.fstat(fd), uid=me)
        if problem is None:
            real_dir = Path(path).resolve().parent
            problem = directory_problem(real_dir, real_dir.stat(), uid=me)
        if problem is not None:
            raise ConfigFileRefused(problem)
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_size:
                raise ConfigFileRefused(f"{path}: larger than {max_size} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigFileRefused(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
