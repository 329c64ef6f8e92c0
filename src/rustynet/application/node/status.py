"""The node's status snapshot, as `rustynet status` (and `status --json`) shows it.

The one rule: status reports, never decides: a peer's path is its path controller's word
(`rustynet.domain.path.peer_status`), not "any handshake", and the map's source is
`map_source.MapSource.status_text`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

import attrs

from rustynet.domain import path as paths
from rustynet.domain.keys import TunnelKey
from rustynet.domain.netmap import PeerMap
from rustynet.domain.node_state import NodeState
from rustynet.domain.path.view import RelayTransport
from rustynet.domain.tunnel import PeerStats


@attrs.frozen
class PeerStatus:
    """One peer as `rustynet status` shows it."""

    name: str
    overlay_ip: str
    path: paths.PathView  # the word, with the endpoint in use or the relay
    last_handshake: datetime | None
    rx_bytes: int
    tx_bytes: int
    phase: str | None = None  # the path controller's phase (domain/path.py); None: none runs


@attrs.frozen
class AgentStatus:
    """The status snapshot for the CLI (`status --json`)."""

    node_name: str
    node_id: str
    overlay_ip: str
    control_url: str
    connected: bool
    backend: str
    peermap_serial: int
    peers: tuple[PeerStatus, ...]
    peermap_source: str = "none"  # map_source.MapSource.status_text

    @classmethod
    def offline(cls, node: NodeState, backend: str) -> AgentStatus:
        """From the saved state alone, when no agent runs."""
        return cls(
            node_name=node.name,
            node_id=node.node_id,
            overlay_ip=first_address(node.overlay_addresses),
            control_url=node.control_url,
            connected=False,
            backend=backend,
            peermap_serial=node.peer_map_watermark,
            peers=(),
        )

    def to_json(self) -> dict[str, object]:
        """The documented `status --json` shape."""
        return {
            "node": {"name": self.node_name, "id": self.node_id, "overlay_ip": self.overlay_ip},
            "control": {"url": self.control_url, "connected": self.connected},
            "backend": self.backend,
            "peermap_serial": self.peermap_serial,
            "peermap_source": self.peermap_source,
            "peers": [
                {
                    "name": p.name,
                    "overlay_ip": p.overlay_ip,
                    **p.path.to_json(),
                    "phase": p.phase,
                    "last_handshake": None
                    if p.last_handshake is None
                    else p.last_handshake.isoformat(),
                    "rx_bytes": p.rx_bytes,
                    "tx_bytes": p.tx_bytes,
                }
                for p in self.peers
            ],
        }


def first_address(addresses: tuple[str, ...]) -> str:
    """The first overlay address without its prefix length ('' when there is none)."""
    return addresses[0].split("/")[0] if addresses else ""


def peer_statuses(
    peer_map: PeerMap | None,
    stats: Mapping[TunnelKey, PeerStats],
    controllers: Mapping[str, paths.PeerPath],
    policy: paths.PathPolicy,
    now: datetime,
    *,
    relay_id: str | None = None,
    transport: Callable[[str], RelayTransport] = lambda _: "wss",
) -> tuple[PeerStatus, ...]:
    """One `PeerStatus` per peer of the applied map (`relay_id`: the relay relayed peers use;
    `transport`: how a relayed peer's packets go there)."""
    peers = []
    for entry in peer_map.peers if peer_map is not None else ():
        s, controller = stats.get(entry.tunnel_key), controllers.get(entry.id)
        seen = s.last_handshake if s else None  # the controller's word, not "any handshake"
        peers.append(
            PeerStatus(
                name=entry.name,
                overlay_ip=first_address(entry.overlay_addresses),
                path=paths.path_view(
                    paths.peer_status(policy, controller, seen, now),
                    s.underlay_endpoint if s else None,
                    entry.candidates,
                    relay_id,
                    transport(entry.id),
                ),
                phase=None if controller is None else controller.phase.value,
                last_handshake=s.last_handshake if s else None,
                rx_bytes=s.rx_bytes if s else 0,
                tx_bytes=s.tx_bytes if s else 0,
            )
        )
    return tuple(peers)


__all__ = ["AgentStatus", "PeerStatus", "first_address", "peer_statuses"]
