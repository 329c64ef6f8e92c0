"""The one writer of private files: keys, certificates, configs, node state, PID records.

The rules, for every file Rustynet writes that others must not read or see half-written:

- the data goes to a new temporary file in the target's own directory, created `O_EXCL |
  O_NOFOLLOW` with its final mode (0600 unless told) and `fchmod`ed to exactly that mode, so a
  permissive or restrictive umask changes nothing and no other user can open it meanwhile;
- it is written fully (a short `write` is continued, never dropped) and fsynced;
- it is then renamed over the target (`replace=True`), or linked to the target name, which
  fails when the target exists (`replace=False`: init never overwrites a key or a config);
- the directory is fsynced, so the new name survives a crash.

A crash or error at any point leaves the old file (or no file) and never a torn one; the
temporary file is removed on any failure. Temporary names start with `TEMP_PREFIX`, which
directory scans (the key store's) skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Final

TEMP_PREFIX: Final = ".tmp-"
PRIVATE_MODE: Final = 0o600

_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write every byte of `data` to `fd`, continuing after short writes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_private_at(
    dir_fd: int,
    name: str,
    data: bytes | bytearray | memoryview,
    *,
    mode: int = PRIVATE_MODE,
    replace: bool = True,
) -> None:
    """Write `name` in the directory `dir_fd` by the rules above.

    `replace=False` raises `FileExistsError` when `name` exists (and leaves it alone)."""
    tmp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(tmp, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have cleared bits; set exactly what we mean
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:  # link(2) never replaces: EEXIST when the name exists, even as a symlink
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if not replace:
        os.remove(tmp, dir_fd=dir_fd)
    os.fsync(dir_fd)


def write_private(
    path: Path,
    data: bytes | bytearray | memoryview,
    *,
    mode: int = PRIVATE_MODE,
    replace: bool = True,
) -> None:
    """Write the file `path` by the rules above (its directory must exist); OSError on failure,
    `FileExistsError` when `replace=False` and `path` exists."""
    dir_fd = os.open(Path(path).parent, _DIR_FLAGS)
    try:
        write_private_at(dir_fd, Path(path).name, data, mode=mode, replace=replace)
    finally:
        os.close(dir_fd)
