"""Node state store port: where the agent keeps its `NodeState` between runs.

The one rule: `save` is atomic (a crash leaves the old state or the new one, never a mix or an
empty file), and `load` never invents state: nothing stored is `None`, anything unreadable raises
`NodeStateCorrupt` (the agent then stops instead of starting with a zero watermark).
"""

from __future__ import annotations

from typing import Protocol

from rustynet.domain.errors import RustynetError
from rustynet.domain.node_state import NodeState


class NodeStateStoreError(RustynetError):
    """The state could not be read or written (I/O, permissions); the message is for operators."""


class NodeStateStore(Protocol):
    """One node's persisted state.

    Contract:
    - `load()` returns the last saved state, `None` if nothing was ever saved, and raises
      `NodeStateCorrupt` for content that does not parse (it never repairs it).
    - `save(state)` replaces the stored state atomically and durably before it returns;
      failures raise `NodeStateStoreError` and leave the previous state in place.
    - `clear()` removes the state (used when a node is revoked and leaves); idempotent.
    """

    def load(self) -> NodeState | None:
        """The saved state, or None when there is none."""
        ...

    def save(self, state: NodeState) -> None:
        """Replace the saved state atomically."""
        ...

    def clear(self) -> None:
        """Remove the saved state (no error when there is none)."""
        ...
