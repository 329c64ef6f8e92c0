"""Each peer's path, direct or through the relay: feeding the per-peer path controllers.

The one rule: a peer is on exactly one path at a time, the one its controller
(`rustynet.domain.path`) chose; this module only observes and carries out. A handshake counts
for the controller only if the tunnel's current endpoint for the peer is on the controller's
path (a bridge endpoint for the relay, any other for direct): the tunnel roams to wherever
the peer's packets come from, so a handshake the peer made through the relay proves nothing
about the direct path. The endpoint is always set back to the controller's choice (never
both paths at once, except inside a relayed probe window, `punching.py`), and a peer whose path
just changed is dropped from the tunnel so that the next plan re-adds it with a fresh session
(except on `direct-seen`: the session already runs direct, a restart would only cost a
handshake both sides might start at once).

Which endpoint on the direct path, the probes (the tunnel's own evidence, no echo to another
port: such an echo would not cross a NAT's mapping for the tunnel's port) and the relayed probe
windows are `punching.py`'s; this module feeds the controller what that evidence says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime

import attrs
import structlog

from rustynet.application.node.punching import Punching
from rustynet.application.node.relay_udp import UdpRelayLegs
from rustynet.application.node.settings import AgentSettings
from rustynet.domain import nat, reconcile
from rustynet.domain import path as paths
from rustynet.domain.candidates import Candidate
from rustynet.domain.keys import TunnelKey
from rustynet.domain.nat import NatClass
from rustynet.domain.netmap import PeerEntry, PeerMap
from rustynet.domain.path import relay_udp
from rustynet.domain.path.view import RelayTransport
from rustynet.domain.tunnel import Capability, PeerDiff, PeerStats, UnderlayEndpoint
from rustynet.ports.clock import Clock
from rustynet.ports.punch import NoPrePunch, PrePunchPort
from rustynet.ports.relay import RelaySession
from rustynet.ports.relay_path import RelayBridgePort
from rustynet.ports.tunnel import TunnelBackend

_log = structlog.get_logger(__name__)


@attrs.define
class PathState:
    """The controllers by peer id, peers due a fresh session, the probes in flight."""

    controllers: dict[str, paths.PeerPath] = attrs.Factory(dict)
    new_session: set[TunnelKey] = attrs.Factory(set)
    probes: set[asyncio.Task[None]] = attrs.Factory(set)


@attrs.frozen
class Plan:
    """What the next plan needs from the paths: an endpoint per peer, the peers whose endpoint
    is left to the tunnel, the peers whose keepalive is off (a nudge), and the peers whose path
    (direct / relay) changed in this plan."""

    endpoints: Mapping[TunnelKey, UnderlayEndpoint] = attrs.Factory(dict)
    learned: frozenset[TunnelKey] = frozenset()
    quiet: frozenset[TunnelKey] = frozenset()
    switched: frozenset[TunnelKey] = frozenset()


class PathKeeper:
    """Owns `PathState`; the reconciler asks it for the endpoints before each plan."""

    def __init__(
        self,
        *,
        tunnel: TunnelBackend,
        bridge: RelayBridgePort | None,
        clock: Clock,
        settings: AgentSettings,
        current_map: Callable[[], PeerMap | None],
        relay_up: Callable[[], bool],
        relay_id: Callable[[], str | None] = lambda: None,
        puncher: PrePunchPort | None = None,
        own_key: Callable[[], TunnelKey | None] = lambda: None,
        own_candidates: Callable[[], tuple[Candidate, ...]] = tuple,
        relay_session: Callable[[], RelaySession | None] = lambda: None,
        own_nat: Callable[[], NatClass | None] = lambda: None,
    ) -> None:
        self.tunnel, self.bridge = tunnel, bridge
        self.clock, self.settings = clock, settings
        self._map, self._relay_up, self._relay_id = current_map, relay_up, relay_id
        self._own_nat = own_nat
        sender = puncher or NoPrePunch()
        self.punching = Punching(settings, sender, own_key, own_candidates)
        stale = self.punching.evidence_window
        self.udp = UdpRelayLegs(
            relay_udp.UdpLegPolicy(stale=stale),
            sender,
            relay_session,
            self.punching.nudge,
            clock.now,
            own_nat=own_nat,
        )
        self.state = PathState()

    def wake_at(self) -> datetime | None:
        """When the paths next need a plan sooner than the regular tick (None: no hurry)."""
        due = [d for d in (self.punching.wake_at(), self.udp.wake_at()) if d is not None]
        return min(due, default=None)

    def transport(self, peer_id: str) -> RelayTransport:
        """How a relayed peer's packets go: the relay's UDP port or the WebSocket session."""
        return self.udp.transport(peer_id)

    def controller(self, peer_id: str) -> paths.PeerPath | None:
        """The controller state of a peer (None when it is not in the map)."""
        return self.state.controllers.get(peer_id)

    def path_of(self, peer_id: str) -> paths.StatusPath | None:
        """The controller's path for a peer (None when it is not in the map)."""
        state = self.controller(peer_id)
        return None if state is None else paths.status_path(state)

    async def endpoints(self, now: datetime, stats: Mapping[TunnelKey, PeerStats]) -> Plan:
        """Feed each peer's path controller; what the next plan needs from the paths."""
        bridge, peer_map, s = self.bridge, self._map(), self.state
        if bridge is None or peer_map is None or now >= peer_map.expires_at:
            s.controllers.clear()
            self.punching.clear()
            self.udp.keep_only(set())
            return Plan()
        relay_up = self._relay_up() and Capability.RELAY_ENDPOINTS in self.tunnel.capabilities()
        listed = {p.id for p in peer_map.peers}
        s.controllers = {k: v for k, v in s.controllers.items() if k in listed}
        self.punching.keep_only(listed)
        bridge.keep_only(listed)
        on_relay = {k for k, v in s.controllers.items() if v.path is paths.PathKind.RELAY}
        self.udp.keep_only(on_relay)
        out: dict[TunnelKey, UnderlayEndpoint] = {}
        learned: set[TunnelKey] = set()
        switched: set[TunnelKey] = set()
        self.punching.own_candidates_changed(peer_map.peers, now)
        own_nat = self._own_nat()
        for peer in peer_map.peers:
            seen = stats.get(peer.tunnel_key)
            state = s.controllers.get(peer.id) or paths.PeerPath.start(now)
            via_relay = seen is not None and (
                bridge.is_bridge_endpoint(seen.underlay_endpoint)
                or self.udp.is_relay_endpoint(peer.id, seen.underlay_endpoint)
            )
            direct = None if seen is None or via_relay else seen.underlay_endpoint
            evidence = self.punching.read(peer.id, seen, direct is not None, now)
            on_path = via_relay == (state.path is paths.PathKind.RELAY)
            relayed = state.path is paths.PathKind.RELAY
            observation = paths.Observation(
                now=max(now, state.as_of),
                last_handshake=seen.last_handshake if seen is not None and on_path else None,
                relay_available=relay_up,
                direct_evidence=now if evidence and relayed else None,
                direct_unlikely=nat.direct_unlikely(own_nat, peer.nat),
            )
            new = await self._feed(peer, state, observation, direct)
            s.controllers[peer.id] = new
            if new.path is not state.path:
                switched.add(peer.tunnel_key)
                if new.phase is paths.PathPhase.DIRECT_UP:  # direct-seen: already running
                    self.punching.left_relay(peer, now)
                else:
                    s.new_session.add(peer.tunnel_key)
            if new.path is paths.PathKind.RELAY:
                if new.last_seen is None:
                    self.punching.relay_unconfirmed(peer, new.since, now)
                home = await bridge.endpoint_for(peer.id)
                home = await self.udp.endpoint(
                    peer, home, seen, now, confirmed=new.last_seen is not None
                )
                chosen = self.punching.relayed_endpoint(peer, home, now)
            else:
                chosen = await self.punching.direct_endpoint(peer, new, seen, direct, now)
                if new.phase in (paths.PathPhase.DIRECT_UP, paths.PathPhase.DIRECT_PROBING):
                    self.punching.unstick(peer, now)
            if chosen is not None:
                out[peer.tunnel_key] = chosen
            elif new.path is paths.PathKind.RELAY:
                learned.add(peer.tunnel_key)
        s.new_session |= self.punching.take_restarts()
        return Plan(out, frozenset(learned), self.punching.quiet_now(now), frozenset(switched))

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

    async def _feed(
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
            if not isinstance(command, paths.ProbeDirect):
                continue
            if step.state.path is paths.PathKind.RELAY:
                # The controller times the window out itself if no direct evidence comes.
                await self.punching.open_window(peer, command.deadline, event.now)
            else:
                task = asyncio.create_task(self._probe(peer, command))
                self.state.probes.add(task)
                task.add_done_callback(self.state.probes.discard)
        return step.state

    async def _probe(self, peer: PeerEntry, command: paths.ProbeDirect) -> None:
        """A direct probe: did the tunnel take the peer's packets directly just now?"""
        s = self.state
        state = s.controllers.get(peer.id)
        if state is None:
            return
        now = max(self.clock.now(), state.as_of)
        ok = self.punching.alive(peer.id, now)
        try:
            s.controllers[peer.id] = await self._feed(
                peer, state, paths.ProbeResult(now=now, probe=command.probe, ok=ok)
            )
        except paths.PathTransitionError:
            return  # the peer moved on (relay lost, new attempt): the result is stale
        if s.controllers[peer.id].path is not state.path:
            s.new_session.add(peer.tunnel_key)


__all__ = ["PathKeeper", "PathState", "Plan"]
