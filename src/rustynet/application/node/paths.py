"""Each peer's path, direct or through the relay: feeding the per-peer path controllers and,
on the direct path, the endpoint trials.

The one rule: a peer is on exactly one path at a time, the one its controller
(`rustynet.domain.path`) chose; this module only observes and carries out. A handshake counts
for the controller only if the tunnel's current endpoint for the peer is on the controller's
path (a bridge endpoint for the relay, any other for direct): the tunnel roams to wherever
the peer's packets come from, so a handshake the peer made through the relay proves nothing
about the direct path. The endpoint is always set back to the controller's choice (never
both paths at once), and a peer whose path just changed is dropped from the tunnel so that
the next plan re-adds it with a fresh session.

On the direct path the endpoint is the one the peer's endpoint trial (`domain.path.trial`)
holds: a signed candidate on trial, or one a completed handshake confirmed. Each direct
attempt of the controller starts a new trial; the trial's pre-punches go out through the
`PrePunchPort`, its re-kicks restart the session on the side that initiates (the lower key).

Liveness is the tunnel's own evidence: a probe of a direct path succeeds when the peer's
packets (keepalives, data, handshakes) arrived within `evidence_window` (one keepalive
interval and two ticks), read from the tunnel's receive counter; nothing is sent to another
port, so the answer holds behind any NAT that passes the tunnel. While relayed, probes still
use the `DirectProbePort` (when there is one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import attrs
import structlog

from rustynet.application.node.settings import AgentSettings
from rustynet.domain import path as paths
from rustynet.domain import reconcile
from rustynet.domain.candidates import Candidate
from rustynet.domain.keys import TunnelKey
from rustynet.domain.netmap import PeerEntry, PeerMap
from rustynet.domain.path import trial as trials
from rustynet.domain.tunnel import Capability, PeerDiff, PeerStats, UnderlayEndpoint
from rustynet.ports.clock import Clock
from rustynet.ports.punch import NoPrePunch, PrePunchPort
from rustynet.ports.relay_path import DirectProbePort, RelayBridgePort
from rustynet.ports.tunnel import TunnelBackend

_log = structlog.get_logger(__name__)


@attrs.define
class PathState:
    """The controllers and endpoint trials by peer id, when each peer's packets last arrived,
    peers due a fresh session, the probes in flight."""

    controllers: dict[str, paths.PeerPath] = attrs.Factory(dict)
    trials: dict[str, tuple[datetime, trials.TrialState]] = attrs.Factory(dict)
    """Per peer: the direct attempt (`PeerPath.since`) the trial belongs to, and the trial."""
    received: dict[str, tuple[int, datetime]] = attrs.Factory(dict)
    """Per peer: the tunnel's receive counter and when it last grew."""
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
        puncher: PrePunchPort | None = None,
        own_key: Callable[[], TunnelKey | None] = lambda: None,
        own_candidates: Callable[[], tuple[Candidate, ...]] = tuple,
    ) -> None:
        self.tunnel, self.bridge, self.prober = tunnel, bridge, prober
        self.clock, self.settings = clock, settings
        self._map, self._relay_up, self._relay_id = current_map, relay_up, relay_id
        self.puncher: PrePunchPort = puncher or NoPrePunch()
        self._own_key, self._own_candidates = own_key, own_candidates
        self.state = PathState()

    @property
    def evidence_window(self) -> timedelta:
        """How recent the peer's last packet must be for a direct probe to succeed."""
        return timedelta(seconds=self.settings.keepalive_seconds) + 2 * paths.DEFAULT_TICK

    def wake_at(self) -> datetime | None:
        """The soonest time an endpoint trial's attempt ends (the agent re-plans then)."""
        policy = self.settings.trial_policy
        due = [d for _, t in self.state.trials.values() if (d := t.due(policy)) is not None]
        return min(due, default=None)

    def trial(self, peer_id: str) -> trials.TrialState | None:
        """The endpoint trial of a peer on the direct path (None otherwise)."""
        held = self.state.trials.get(peer_id)
        return None if held is None else held[1]

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
            s.trials.clear()
            return {}
        relay_up = self._relay_up() and Capability.RELAY_ENDPOINTS in self.tunnel.capabilities()
        listed = {p.id for p in peer_map.peers}
        s.controllers = {k: v for k, v in s.controllers.items() if k in listed}
        s.trials = {k: v for k, v in s.trials.items() if k in listed}
        s.received = {k: v for k, v in s.received.items() if k in listed}
        bridge.keep_only(listed)
        out: dict[TunnelKey, UnderlayEndpoint] = {}
        for peer in peer_map.peers:
            seen = stats.get(peer.tunnel_key)
            self._note_received(peer.id, seen, now)
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
                s.trials.pop(peer.id, None)
                out[peer.tunnel_key] = await bridge.endpoint_for(peer.id)
                continue
            direct = None if seen is None or via_relay else seen.underlay_endpoint
            chosen = await self._try(peer, s.controllers[peer.id], seen, direct, now)
            if chosen is not None:
                out[peer.tunnel_key] = chosen
        return out

    def _note_received(self, peer_id: str, seen: PeerStats | None, now: datetime) -> None:
        if seen is None:
            self.state.received.pop(peer_id, None)
            return
        before = self.state.received.get(peer_id)
        if before is None or seen.rx_bytes != before[0]:
            self.state.received[peer_id] = (seen.rx_bytes, now)

    def alive(self, peer_id: str, now: datetime) -> bool:
        """The tunnel received from the peer within `evidence_window` (keepalives count)."""
        seen = self.state.received.get(peer_id)
        return seen is not None and seen[0] > 0 and now - seen[1] <= self.evidence_window

    async def _try(
        self,
        peer: PeerEntry,
        state: paths.PeerPath,
        seen: PeerStats | None,
        direct: UnderlayEndpoint | None,
        now: datetime,
    ) -> UnderlayEndpoint | None:
        """Feed the peer's endpoint trial (a new one per direct attempt); its endpoint."""
        policy = self.settings.trial_policy
        order = trials.punch_order(self._own_candidates(), peer.candidates)
        held = self.state.trials.get(peer.id)
        if held is None or held[0] != state.since:
            trial, effects = trials.TrialState.start(policy, order, now)
        else:
            trial, effects = trials.reorder(policy, held[1], order, now)
        handshake = seen.last_handshake if seen is not None else None
        trial, more = trials.observe(policy, trial, now, handshake, direct)
        self.state.trials[peer.id] = (state.since, trial)
        await self._carry_out(peer, (*effects, *more))
        if trial.confirmed is not None and (held is None or held[1].confirmed is None):
            _log.info("path.confirmed", peer=peer.name, endpoint=trial.confirmed.to_text())
        return trial.endpoint

    async def _carry_out(self, peer: PeerEntry, effects: tuple[trials.TrialEffect, ...]) -> None:
        own = self._own_key()
        for effect in effects:
            if isinstance(effect, trials.Punch):
                await self.puncher.punch(effect.targets, effect.count)
            elif own is not None and reconcile.initiates(own, peer.tunnel_key):
                # Only the side that speaks first re-kicks: both re-kicking at once could
                # cross two handshakes (docs/lab.md pitfall 1).
                self.state.new_session.add(peer.tunnel_key)

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
        s = self.state
        before = s.controllers.get(peer_id)
        endpoint = reconcile.first_endpoint(peer) if peer else None
        if before is not None and before.path is paths.PathKind.DIRECT:
            ok = self.alive(peer_id, self.clock.now())  # the tunnel's own evidence
        elif self.prober is not None and endpoint is not None:
            timeout = max(0.1, (command.deadline - self.clock.now()).total_seconds())
            ok = await self.prober.probe(endpoint, timeout)
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
