"""The `path` word `rustynet status` and the daemon's log show for a peer (`direct`, `relay`,
`trying`, `none`), read from the controller's state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rustynet.domain.path.phases import PathPhase, StatusPath, status_path_of

if TYPE_CHECKING:
    from datetime import datetime

    from rustynet.domain.path.policy import PathPolicy
    from rustynet.domain.path.states import PeerPath


def status_path(state: PeerPath) -> StatusPath:
    """The `path` field `rustynet status` shows for this peer: the controller's word, and
    `trying` until a handshake on the current path (after `since`) confirms it. A handshake
    from before the attempt, or one the peer made on the other path, never shows `direct`."""
    if state.phase is not PathPhase.DIRECT_UNREACHABLE and state.last_seen is None:
        return "trying"
    return status_path_of(state.phase)


def peer_status(
    policy: PathPolicy, state: PeerPath | None, last_handshake: datetime | None, now: datetime
) -> StatusPath:
    """The `path` word for a peer: its controller's (`status_path`) when one runs; without one
    (no relay bridge configured) `direct` only while the tunnel's latest handshake is live
    (younger than `session_timeout`), else `trying`."""
    if state is not None:
        return status_path(state)
    if last_handshake is not None and now - last_handshake < policy.session_timeout:
        return "direct"
    return "trying"
