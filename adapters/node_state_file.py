"""`NodeStateStore` adapters: a private file written atomically, and an in-memory one.

The one rule: a save never leaves a torn file: it goes through the private-file writer
(`rustynet.adapters.support.private_file`: a temporary file in the same directory, mode 0600,
written fully, fsynced, renamed over the old one, the directory fsynced), so a crash leaves
either the old state or the new one.
"""

from __future__ import annotations

from pathlib import Path

from rustynet.adapters.support.private_file import write_private

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
        try:
            write_private(self.path, state.to_bytes())
        except OSError as exc:
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
