"""`NodeStateStore` adapters: a private file written atomically, and an in-memory one.

The one rule: a save never leaves a torn file: the state goes to a temporary file in the same
directory (mode 0600), is fsynced, renamed over the old one, and the directory is fsynced, so a
crash leaves either the old state or the new one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from rustynet.domain.node_state import NodeState
from rustynet.ports.node_state_store import NodeStateStoreError


class FileNodeStateStore:
    """The state in `path` (its directory must exist and should be private to the daemon)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> NodeState | None:
        """Read and strictly parse the file; None when it does not exist."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NodeStateStoreError(f"{self.path}: cannot read node state: {exc}") from exc
        return NodeState.from_bytes(data)

    def save(self, state: NodeState) -> None:
        """Write a temporary file, fsync, rename over the state, fsync the directory."""
        data = state.to_bytes()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise NodeStateStoreError(f"{self.path}: cannot save node state: {exc}") from exc

    def clear(self) -> None:
        """Remove the file if present."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise NodeStateStoreError(f"{self.path}: cannot remove node state: {exc}") from exc


class MemoryNodeStateStore:
    """The state as bytes in memory (round-trips through the same strict parser)."""

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.saves = 0

    def load(self) -> NodeState | None:
        """Parse the saved bytes; None when nothing was saved."""
        return None if self.data is None else NodeState.from_bytes(self.data)

    def save(self, state: NodeState) -> None:
        """Keep the canonical bytes."""
        self.data = state.to_bytes()
        self.saves += 1

    def clear(self) -> None:
        """Forget the state."""
        self.data = None
