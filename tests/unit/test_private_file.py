"""The one private-file writer (`rustynet.adapters.support.private_file`): 0600 whatever the
umask, every byte written, a failure mid-write leaves the old file, init never replaces."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from rustynet.adapters.node_state_file import FileNodeStateStore
from rustynet.adapters.support.private_file import TEMP_PREFIX, write_private

from rustynet.ports.node_state_store import NodeStateStoreError
from tests.unit.test_node_state import STATE


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_mode_is_exact_whatever_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    """A permissive umask does not widen 0600, a restrictive one does not narrow it."""
    os.umask(mask)
    write_private(tmp_path / "key", b"secret")
    write_private(tmp_path / "cert", b"public", mode=0o644, replace=False)
    assert (_mode(tmp_path / "key"), _mode(tmp_path / "cert")) == (0o600, 0o644)


def test_replace_swaps_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """The new content replaces the old one; only the target name remains."""
    target = tmp_path / "state"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.write may write less than asked; every byte still reaches the file."""
    real_write = os.write

    def one_byte(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:1]))

    monkeypatch.setattr(os, "write", one_byte)
    write_private(tmp_path / "f", b"0123456789")
    assert (tmp_path / "f").read_bytes() == b"0123456789"


def _fail_after_partial(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next os.write writes 3 bytes, the one after fails (a full disk, a crash)."""
    real_write = os.write
    calls = []

    def partial(fd: int, data: bytes | memoryview) -> int:
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_write(fd, bytes(data[:3]))

    monkeypatch.setattr(os, "write", partial)


def test_failure_mid_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partial data then an error: the old content survives untouched, no temp file is left."""
    target = tmp_path / "state"
    target.write_bytes(b"the old content")
    _fail_after_partial(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        write_private(target, b"the new content")
    assert target.read_bytes() == b"the old content"
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_node_state_save_failing_mid_write_keeps_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node state file is replaced, never truncated in place: the old bytes survive."""
    path = tmp_path / "node-state.json"
    path.write_bytes(b"{}")
    store = FileNodeStateStore(path)
    _fail_after_partial(monkeypatch)
    with pytest.raises(NodeStateStoreError, match="cannot save node state"):
        store.save(STATE)
    assert path.read_bytes() == b"{}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_no_replace_refuses_an_existing_file_and_a_symlink(tmp_path: Path) -> None:
    """replace=False (init): an existing file or link is left alone, nothing else is written."""
    (tmp_path / "key").write_bytes(b"keep")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "key", b"new", replace=False)
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "link", b"new", replace=False)
    assert (tmp_path / "key").read_bytes() == b"keep"
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key", "link"]
