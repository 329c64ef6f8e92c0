"""The enrolled node's saved state: the one copy in memory and the store it is saved to.

The one rule: the state is saved before it is used: `save` writes the store first and only
then replaces the copy in memory, so what the tunnel follows is never ahead of what a restart
reads back (the peer-map watermark above all). Enrollment, map intake and key rotation all
write through here; nothing else holds a `NodeState` across a call.
"""

from __future__ import annotations

from rustynet.application.node.errors import NotEnrolled
from rustynet.domain.node_state import NodeState
from rustynet.ports.node_state_store import NodeStateStore


class SavedState:
    """The node state in memory (`current`, None before `join`/`load`) and its store."""

    def __init__(self, store: NodeStateStore) -> None:
        self.store = store
        self.current: NodeState | None = None

    def load(self) -> NodeState:
        """Read the saved state (a missing one raises `NotEnrolled`)."""
        state = self.store.load()
        if state is None:
            raise NotEnrolled("no node state: join first")
        self.current = state
        return state

    def save(self, state: NodeState) -> None:
        """Save `state`, then make it the current one."""
        self.store.save(state)
        self.current = state

    def require(self, why: str = "start the agent first") -> NodeState:
        """The current state, or `NotEnrolled(why)`."""
        if self.current is None:
            raise NotEnrolled(why)
        return self.current


__all__ = ["SavedState"]
