"""Node-side relay path port: the bridge that splices relayed peers into the tunnel.

The one rule: the port never touches tunnel packets' content: the bridge moves datagrams
unchanged between the tunnel and a relay session. Implemented by
`rustynet.adapters.relay.bridge`. (Whether a relayed peer's direct path works again is the
tunnel's own evidence: `rustynet.application.node.punching`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from rustynet.domain.tunnel import UnderlayEndpoint
from rustynet.ports.relay import RelaySession


class RelayBridgePort(Protocol):
    """Local endpoints for relayed peers, spliced onto the current relay session."""

    allowed: Callable[[str], bool]
    """Which node ids may get an endpoint on demand when the relay delivers from them."""

    async def endpoint_for(self, node_id: str) -> UnderlayEndpoint:
        """The local endpoint the tunnel should use for `node_id` (bound on first use)."""
        ...

    def is_bridge_endpoint(self, endpoint: UnderlayEndpoint | None) -> bool:
        """True when `endpoint` is one of the bridge's own local endpoints."""
        ...

    def keep_only(self, node_ids: set[str]) -> None:
        """Release the endpoints of nodes not in `node_ids`."""
        ...

    async def run(self, session: RelaySession) -> None:
        """Carry packets both ways over `session` until it ends (its error propagates)."""
        ...

    def close(self) -> None:
        """Release every endpoint."""
        ...
