"""Node-side relay path ports: the bridge that splices relayed peers into the tunnel, and the
direct-path prober the path controller uses while a peer is relayed.

The one rule: neither port ever touches tunnel packets' content: the bridge moves datagrams
unchanged between the tunnel and a relay session; the prober only learns whether an echo came
back from a peer's underlay address. Implemented by `rustynet.adapters.relay.bridge` and
`rustynet.adapters.relay.probe`.
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


class DirectProbePort(Protocol):
    """Asks a peer's underlay address whether it answers (not authenticated: see the adapter)."""

    async def probe(self, endpoint: UnderlayEndpoint, timeout: float = 1.0) -> bool:
        """True when an echo came back from `endpoint`'s address within `timeout` s."""
        ...


class DirectProbeService(DirectProbePort, Protocol):
    """A prober the daemon owns: started once before the agents use it, closed at shutdown."""

    async def start(self) -> None:
        """Bind what the probes need (the adapter's UDP socket)."""
        ...

    def close(self) -> None:
        """Release it."""
        ...
