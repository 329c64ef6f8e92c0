"""Each peer's path, direct or through the relay: feeding the per-peer path controllers.

The one rule: a peer is on exactly one path at a time, the one its controller
(`rustynet.domain.path`) chose; this module only observes and carries out. A handshake counts
for the controller only if the tunnel's current endpoint for the peer is on the controller's
path (a bridge endpoint for the relay, any other for direct): the tunnel roams to wherever
the peer's packets come from, so a handshake the peer made through the relay proves nothing
about the direct path. The endpoint is always set back to the controller's choice (never
both paths at once), and a peer whose path just changed is dropped from the tunnel so that
the next plan re-adds it with a fresh session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime

import attrs
import structlog

from rustynet.application.node.settings import AgentSettings
from rustynet.domain import path as paths
from rustynet.domain import reconcile
from rustynet.domain.keys import TunnelKey
from rustynet.domain.netmap import PeerEntry, PeerMap
from rustynet.domain.tunnel import Capability, PeerDiff, PeerStats, UnderlayEndpoint
from rustynet.ports.clock import Clock
from rustynet.ports.relay_path import DirectProbePort, RelayBridgePort
from rustynet.ports.tunnel import TunnelBackend

_log = structlog.get_logger(__name__)


@attrs.define
class PathState:
    """The controllers by peer id, peers due a fresh session, the probes in flight."""

    controllers: dict[str, paths.PeerPath] = attrs.Factory(dict)
    new_session: set[TunnelKey] = attrs.Factory(set)
    probes: set[asyncio.Task[None]] = attrs.Factory(set)


class PathKeeper:
    """Owns `PathState`; the reconciler asks it for relay endpoints before each plan."""

    def __init__(
        self,
        *,
        tunnel: TunnelBackend,
        bridge: RelayBridgePort | None,
        prober: DirectProbePort | None,
        clock: Clock,
        settings: AgentSettings,
        current_map: Callable[[], PeerMap | None],
        relay_up: Callable[[], bool],
        relay_id: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.tunnel, self.bridge, self.prober = tunnel, bridge, prober
        self.clock, self.settings = clock, settings
        self._map, self._relay_up, self._relay_id = current_map, relay_up, relay_id
        self.state = PathState()

    def controller(self, peer_id: str) -> paths.PeerPath | None:
        """The controller state of a peer (None when it is not in the map)."""
        return self.state.controllers.get(peer_id)

    def path_of(self, peer_id: str) -> paths.StatusPath | None:
        """The controller's path for a peer (None when it is not in the map)."""
        state = self.controller(peer_id)
        return None if state is None else paths.status_path(state)

    async def endpoints(
        self, now: datetime, stats: Mapping[TunnelKey, PeerStats]
    ) -> dict[TunnelKey, UnderlayEndpoint]:
        """Feed each peer's path controller; the endpoints of peers that must use the relay."""
        bridge, peer_map, s = self.bridge, self._map(), self.state
        if bridge is None or peer_map is None or now >= peer_map.expires_at:
            s.controllers.clear()
            return {}
        relay_up = self._relay_up() and Capability.RELAY_ENDPOINTS in self.tunnel.capabilities()
        listed = {p.id for p in peer_map.peers}
        s.controllers = {k: v for k, v in s.controllers.items() if k in listed}
        bridge.keep_only(listed)
        out: dict[TunnelKey, UnderlayEndpoint] = {}
        for peer in peer_map.peers:
            seen = stats.get(peer.tunnel_key)
            state = s.controllers.get(peer.id) or paths.PeerPath.start(now)
            via_relay = seen is not None and bridge.is_bridge_endpoint(seen.underlay_endpoint)
            on_path = via_relay == (state.path is paths.PathKind.RELAY)
            observation = paths.Observation(
                now=max(now, state.as_of),
                last_handshake=seen.last_handshake if seen is not None and on_path else None,
                relay_available=relay_up,
            )
            endpoint = seen.underlay_endpoint if seen is not None else None
            s.controllers[peer.id] = self._feed(peer, state, observation, endpoint)
            if s.controllers[peer.id].path is not state.path:
                s.new_session.add(peer.tunnel_key)
            if s.controllers[peer.id].path is paths.PathKind.RELAY:
                out[peer.tunnel_key] = await bridge.endpoint_for(peer.id)
        return out

    async def restart_sessions(self, stats: Mapping[TunnelKey, PeerStats]) -> None:
        """Drop peers whose path just changed, so the plan re-adds them with a fresh session.

        The controller trusts a path only after a handshake on it, but a live tunnel session
        does not handshake again for minutes just because its endpoint moved.
        """
        restart = sorted(self.state.new_session & set(stats), key=reconcile.key_order)
        self.state.new_session = set()
        if restart:
            await self.tunnel.apply(PeerDiff(remove=tuple(restart)))

    def probes(self) -> tuple[asyncio.Task[None], ...]:
        """The direct probes in flight (the agent cancels them when its loop ends)."""
        return tuple(self.state.probes)

    def _feed(
        self,
        peer: PeerEntry,
        state: paths.PeerPath,
        event: paths.PathInput,
        endpoint: UnderlayEndpoint | None = None,
    ) -> paths.PeerPath:
        step = paths.step(self.settings.path_policy, state, event)
        for transition in step.transitions:
            # Probe cycles (direct-up <-> direct-probing, relay <-> relay-probing) every few
            # seconds are debug noise; a change of path is what operators need to see.
            log = _log.info if transition.changes_path else _log.debug
            word = paths.status_path(step.state)
            view = paths.path_view(word, endpoint, peer.candidates, self._relay_id())
            log("path.changed", peer=peer.name, path=view.text(), **transition.log_fields())
        for command in step.commands:
            if isinstance(command, paths.ProbeDirect):
                task = asyncio.create_task(self._probe(peer.id, command))
                self.state.probes.add(task)
                task.add_done_callback(self.state.probes.discard)
        return step.state

    async def _probe(self, peer_id: str, command: paths.ProbeDirect) -> None:
        """Run one direct probe and feed its result (a stale result is ignored)."""
        peer_map = self._map()
        peer = next((p for p in peer_map.peers if p.id == peer_id), None) if peer_map else None
        ok = False
        endpoint = reconcile.first_endpoint(peer) if peer else None
        if self.prober is not None and endpoint is not None:
            timeout = max(0.1, (command.deadline - self.clock.now()).total_seconds())
            ok = await self.prober.probe(endpoint, timeout)
        s = self.state
        state = s.controllers.get(peer_id)
        if state is None or peer is None:
            return
        now = max(self.clock.now(), state.as_of)
        try:
            s.controllers[peer_id] = self._feed(
                peer, state, paths.ProbeResult(now=now, probe=command.probe, ok=ok)
            )
        except paths.PathTransitionError:
            return  # the peer moved on (relay lost, new attempt): the result is stale
        if s.controllers[peer_id].path is not state.path:
            s.new_session.add(peer.tunnel_key)


__all__ = ["PathKeeper", "PathState"]
