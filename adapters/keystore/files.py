"""Private-file checks and atomic writes for the file-backed key store and passphrase files.

The one rule: a secret is read or written only through a descriptor whose target was verified
AFTER opening it (O_NOFOLLOW, then fstat on that descriptor), inside a directory that was
itself opened with O_DIRECTORY|O_NOFOLLOW and verified the same way. Nothing here ever changes
the mode or owner of an existing path: a mismatch is reported with the path, the mode found and
the mode expected, and the operator fixes it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

from rustynet.ports.keystore import (
    KeystoreError,
    KeystoreFinding,
    KeystorePermissionError,
)

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
MAX_FILE_SIZE: Final = 1 << 20  # key files are a few hundred bytes; refuse to slurp more

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_CREATE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def dir_findings(path: Path, st: os.stat_result, *, uid: int) -> list[KeystoreFinding]:
    """Problems with a directory's stat result (type, mode 0700, owner)."""
    where = str(path)
    if stat.S_ISLNK(st.st_mode):
        return [KeystoreFinding(where, "is a symlink", "symlink", "a real directory")]
    if not stat.S_ISDIR(st.st_mode):
        return [KeystoreFinding(where, "is not a directory", "other file type", "directory")]
    found: list[KeystoreFinding] = []
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        found.append(
            KeystoreFinding(where, "directory mode is not private", _mode(st), f"{DIR_MODE:04o}")
        )
    if st.st_uid != uid:
        found.append(
            KeystoreFinding(
                where, "directory owned by another user", f"uid {st.st_uid}", f"uid {uid}"
            )
        )
    return found


def file_findings(
    path: Path,
    st: os.stat_result,
    *,
    uid: int,
    allow_read_only: bool = False,
    root_owner_ok: bool = False,
) -> list[KeystoreFinding]:
    """Problems with a secret file's stat result (regular file, mode 0600, owner)."""
    where = str(path)
    if stat.S_ISLNK(st.st_mode):
        return [KeystoreFinding(where, "is a symlink", "symlink", "a regular file")]
    if not stat.S_ISREG(st.st_mode):
        return [KeystoreFinding(where, "is not a regular file", "other file type", "regular file")]
    found: list[KeystoreFinding] = []
    mode = stat.S_IMODE(st.st_mode)
    ok_modes = {FILE_MODE, 0o400} if allow_read_only else {FILE_MODE}
    if mode not in ok_modes:
        expected = "0600 or 0400" if allow_read_only else f"{FILE_MODE:04o}"
        found.append(KeystoreFinding(where, "file mode is not private", _mode(st), expected))
    if st.st_uid != uid and not (root_owner_ok and st.st_uid == 0):
        found.append(
            KeystoreFinding(where, "file owned by another user", f"uid {st.st_uid}", f"uid {uid}")
        )
    return found


def _raise_first(findings: list[KeystoreFinding]) -> None:
    if findings:
        raise KeystorePermissionError(findings[0])


def open_private_dir(path: Path, *, uid: int) -> int:
    """Open `path` as a directory without following a symlink and verify it is 0700 and ours.

    Returns the directory descriptor (the caller closes it). Raises `KeystorePermissionError`
    on a symlink, wrong mode or owner, and `FileNotFoundError` when it does not exist.
    """
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _raise_first(dir_findings(path, os.lstat(path), uid=uid))
            raise KeystorePermissionError(
                KeystoreFinding(str(path), "cannot be opened as a directory")
            ) from exc
        raise
    try:
        _raise_first(dir_findings(path, os.fstat(fd), uid=uid))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_file(
    dir_fd: int, directory: Path, name: str, *, uid: int, allow_read_only: bool = False
) -> bytes:
    """Read `name` inside the verified directory `dir_fd`: O_NOFOLLOW, then fstat checks.

    `FileNotFoundError` when absent; `KeystorePermissionError` for a symlink, another file
    type, a mode other than 0600 (or 0400 when `allow_read_only`) or another owner.
    """
    path = directory / name
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeystorePermissionError(
                KeystoreFinding(str(path), "is a symlink", "symlink", "a regular file")
            ) from exc
        raise
    return _read_checked(fd, path, uid=uid, allow_read_only=allow_read_only)


def read_private_path(
    path: Path, *, uid: int, allow_read_only: bool = True, root_owner_ok: bool = False
) -> bytes:
    """Read one private file given by full path (a passphrase file): checks as for key files,
    and its directory must not be a symlink (its mode is not ours to demand)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeystorePermissionError(
                KeystoreFinding(str(path), "is a symlink", "symlink", "a regular file")
            ) from exc
        raise
    return _read_checked(
        fd, path, uid=uid, allow_read_only=allow_read_only, root_owner_ok=root_owner_ok
    )


def _read_checked(
    fd: int, path: Path, *, uid: int, allow_read_only: bool, root_owner_ok: bool = False
) -> bytes:
    """fstat the open descriptor, refuse on any finding, then read it; always closes `fd`."""
    try:
        st = os.fstat(fd)
        _raise_first(
            file_findings(
                path, st, uid=uid, allow_read_only=allow_read_only, root_owner_ok=root_owner_ok
            )
        )
        if st.st_size > MAX_FILE_SIZE:
            raise KeystoreError(f"{path}: {st.st_size} bytes is too large for a secret file")
        chunks: list[bytes] = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def stat_private_path(
    path: Path, *, uid: int, allow_read_only: bool = True, root_owner_ok: bool = False
) -> list[KeystoreFinding]:
    """Findings for a private file given by path, without reading it (for doctor)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return [KeystoreFinding(str(path), "does not exist")]
    except OSError as exc:  # a directory on the way we may not search
        return [KeystoreFinding(str(path), f"cannot be examined ({exc.strerror})")]
    return file_findings(
        path, st, uid=uid, allow_read_only=allow_read_only, root_owner_ok=root_owner_ok
    )


def create_private_dir(path: Path) -> None:
    """Create `path` (not its parents) as 0700; an existing path is left alone for the checks."""
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return
    # mkdir applies the umask; 0700 minus a umask can only get narrower. Make it exactly 0700
    # on the directory we just created (never on an existing one).
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fchmod(fd, DIR_MODE)
    finally:
        os.close(fd)
