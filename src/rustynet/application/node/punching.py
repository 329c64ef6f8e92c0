"""Getting a peer's tunnel onto a direct path across NATs, and the tunnel's evidence that it is
there: the per-peer endpoint trials, the probe windows while relayed, and the receive counters.

The one rule (authenticated before trusted): the tunnel is pointed only at a peer's signed
candidates or at an endpoint it moved to itself on authenticated packets, and the direct path
is believed only on the tunnel's own evidence, never on an unauthenticated echo:

* on the direct path, the peer's endpoint trial (`domain.path.trial`) holds the endpoint; a
  completed handshake confirms it; its pre-punches go out through the `PrePunchPort`, its
  re-kicks restart the session on the side that speaks first (the lower key);
* a direct path is alive while the tunnel took packets from the peer on a direct endpoint
  within `evidence_window` (a keepalive interval and two ticks): keepalives are evidence;
* while relayed, each probe the path controller asks for opens a window of `probe_timeout`:
  the tunnel is pointed at the peer's next candidate, our NAT is opened toward all of them
  (pre-punch), and the tunnel is nudged to send one keepalive at once (its keepalive switched
  off for one plan and on again, which makes the tunnel send immediately), inside the live
  session, so nothing is torn down. If it reaches the peer, the peer's tunnel roams to us and
  its packets come back directly: two consecutive reads of the tunnel with a direct endpoint
  and a grown receive counter are the evidence (`direct_evidence`) that moves the controller
  to direct at once. Outside a window the endpoint is the relay bridge, so a direct endpoint
  seen there was set by the tunnel itself, on authenticated packets (the peer's window);
* a direct peer the tunnel sent nothing to for a keepalive interval (and `STALL_MARGIN`) is
  nudged, and so is every peer when our own candidates change: that sets each endpoint
  again, which is how a host whose address changed (roaming) gets its tunnel sending again.
"""

from __future__ import annotations

from collections.abc import Callable
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
from rustynet.domain.tunnel import PeerStats, UnderlayEndpoint
from rustynet.ports.punch import PrePunchPort

_log = structlog.get_logger(__name__)

NUDGE_DELAY = timedelta(milliseconds=50)
"""The keepalive comes back on this soon after a nudge switched it off."""

STALL_MARGIN = timedelta(milliseconds=500)
"""A direct peer the tunnel sent nothing to for a keepalive interval and this margin is
nudged: the tunnel resets a peer's keepalive timer on every packet it receives too, so two
idle ends can settle into one of them never sending (and the other then sees no evidence);
and a host whose address changed has a tunnel that keeps failing to send from the old one
until the endpoint is set again (which a nudge does)."""

RELAY_REKICK = timedelta(seconds=1)
"""A relayed peer with no handshake through the relay this long after the switch gets a fresh
session from the side that speaks first (at most `RELAY_REKICKS` times): both ends switch at
nearly the same instant, and the first initiation can reach the peer a moment before the peer
holds the map that lists us (its bridge drops it); without a re-kick the pair waits out the
tunnel's own 5 s retry or the responder's grace."""

RELAY_REKICKS = 3

WINDOW_READS = timedelta(milliseconds=200)
"""While a probe window is open the tunnel is read this often (the answer is one RTT away)."""


@attrs.frozen
class Read:
    """One read of the tunnel for a peer: its counters, whether its endpoint was direct, and
    when the send counter last grew."""

    rx: int
    direct: bool
    at: datetime
    tx: int = 0
    sent_at: datetime | None = None


@attrs.frozen
class Window:
    """A probe window while relayed: the candidate the tunnel is pointed at until `deadline`.

    The plan that opens it points the tunnel at `target` with the keepalive off; from the
    plan at `nudge_at` on, the keepalive is on again (the tunnel sends one at once) and the
    endpoint is left to the tunnel, so that where it roams (on authenticated packets only) is
    what the next reads see: any read after the first one that follows the pointing plan."""

    target: UnderlayEndpoint
    deadline: datetime
    nudge_at: datetime
    nudged: bool = False


@attrs.define
class PunchState:
    """Per peer id: trial (with the direct attempt it belongs to), window, reads, evidence."""

    trials: dict[str, tuple[datetime, trials.TrialState]] = attrs.Factory(dict)
    windows: dict[str, Window] = attrs.Factory(dict)
    opened: dict[str, int] = attrs.Factory(dict)
    reads: dict[str, Read] = attrs.Factory(dict)
    pointed: dict[str, datetime] = attrs.Factory(dict)
    """When a plan last pointed the tunnel at a direct endpoint while the peer was relayed:
    a read before or at it proves nothing about where the tunnel roamed."""
    last_direct: dict[str, datetime] = attrs.Factory(dict)
    """When the tunnel last took packets from the peer on a direct endpoint."""
    quiet: dict[TunnelKey, datetime] = attrs.Factory(dict)
    """Peers whose keepalive is off in plans until the time given (a nudge)."""
    nudged: dict[str, datetime] = attrs.Factory(dict)
    """When a stalled direct peer was last nudged (at most once per keepalive interval)."""
    own: tuple[Candidate, ...] | None = None
    """Our own candidates as last seen (a change means our address changed: nudge all)."""
    restart: set[TunnelKey] = attrs.Factory(set)
    """Peers due a fresh session (a trial's re-kick)."""
    relay_kicks: dict[str, tuple[datetime, int]] = attrs.Factory(dict)
    """Per relayed peer not yet confirmed: when its relay stint began, re-kicks done."""


class Punching:
    """Owns `PunchState`; `paths.PathKeeper` calls it once per peer and tick."""

    def __init__(
        self,
        settings: AgentSettings,
        puncher: PrePunchPort,
        own_key: Callable[[], TunnelKey | None],
        own_candidates: Callable[[], tuple[Candidate, ...]],
    ) -> None:
        self.settings, self.puncher = settings, puncher
        self._own_key, self._own_candidates = own_key, own_candidates
        self.state = PunchState()

    @property
    def evidence_window(self) -> timedelta:
        """How recent the peer's last direct packet must be for a direct probe to succeed: each
        end sends at least once per keepalive interval plus the stall margin and a tick
        (`unstick`), so two intervals and two ticks cover one lost keepalive."""
        keepalive = timedelta(seconds=self.settings.keepalive_seconds)
        return 2 * keepalive + 2 * paths.DEFAULT_TICK

    def keep_only(self, listed: set[str]) -> None:
        """Forget peers no longer in the map."""
        s = self.state
        tables = (
            s.trials,
            s.windows,
            s.opened,
            s.reads,
            s.pointed,
            s.last_direct,
            s.nudged,
            s.relay_kicks,
        )
        for table in tables:
            for gone in [k for k in table if k not in listed]:
                del table[gone]

    def clear(self) -> None:
        """No map: forget everything."""
        self.state = PunchState()

    def wake_at(self) -> datetime | None:
        """The soonest time something is due: an attempt's end, a nudge's second half."""
        policy, s = self.settings.trial_policy, self.state
        due = [d for _, t in s.trials.values() if (d := t.due(policy)) is not None]
        due += [w.nudge_at if not w.nudged else w.deadline for w in s.windows.values()]
        due += list(s.quiet.values())
        if s.windows and s.reads:  # read often while a window is open: the answer is an RTT away
            due.append(max(r.at for r in s.reads.values()) + WINDOW_READS)
        return min(due, default=None)

    def trial(self, peer_id: str) -> trials.TrialState | None:
        """The endpoint trial of a peer on the direct path (None otherwise)."""
        held = self.state.trials.get(peer_id)
        return None if held is None else held[1]

    # --- the tunnel's evidence ---------------------------------------------------------------

    def read(self, peer_id: str, seen: PeerStats | None, direct: bool, now: datetime) -> bool:
        """Record one read; True when it is evidence of direct packets: the endpoint is direct
        and the receive counter grew since the previous read, which came after the last plan
        that pointed the tunnel at a direct endpoint itself (so the tunnel moved it, on
        authenticated packets, or kept it while they arrived there)."""
        s = self.state
        before = s.reads.get(peer_id)
        if seen is None:
            s.reads.pop(peer_id, None)
            return False
        sent = before is None or seen.tx_bytes != before.tx or before.sent_at is None
        sent_at = now if sent or before is None else before.sent_at
        s.reads[peer_id] = Read(seen.rx_bytes, direct, now, seen.tx_bytes, sent_at)
        pointed = s.pointed.get(peer_id)
        if before is None or not direct or seen.rx_bytes <= before.rx:
            return False
        if pointed is not None and before.at <= pointed:
            return False
        s.last_direct[peer_id] = now
        return True

    def unstick(self, peer: PeerEntry, now: datetime) -> None:
        """Nudge a direct peer the tunnel has sent nothing to for a keepalive interval and
        `STALL_MARGIN` (see there), at most once per keepalive interval."""
        s = self.state
        read, last = s.reads.get(peer.id), s.nudged.get(peer.id)
        keepalive = timedelta(seconds=self.settings.keepalive_seconds)
        if read is None or read.sent_at is None or now - read.sent_at < keepalive + STALL_MARGIN:
            return
        if last is not None and now - last < keepalive:
            return
        s.nudged[peer.id] = now
        self.nudge(peer, now)

    def nudge(self, peer: PeerEntry, now: datetime) -> None:
        """Make the tunnel send `peer` a keepalive now (its keepalive off for one plan)."""
        self.state.quiet[peer.tunnel_key] = now + NUDGE_DELAY

    def nudge_all(self, peer_map: PeerMap | None, now: datetime) -> None:
        """Nudge every peer of `peer_map` (our host's addresses changed)."""
        for peer in () if peer_map is None else peer_map.peers:
            self.nudge(peer, now)

    def own_candidates_changed(self, peers: tuple[PeerEntry, ...], now: datetime) -> None:
        """Our own candidates changed (an address came or went): nudge every peer, so each
        tunnel endpoint is set again and a keepalive goes out from where we are now."""
        own = self._own_candidates()
        before, self.state.own = self.state.own, own
        if before is None or before == own:
            return
        _log.info("path.own_address_changed", peers=len(peers))
        for peer in peers:
            self.nudge(peer, now)

    def alive(self, peer_id: str, now: datetime) -> bool:
        """The tunnel took packets from the peer on a direct endpoint within the window."""
        last = self.state.last_direct.get(peer_id)
        return last is not None and now - last <= self.evidence_window

    # --- the direct path: endpoint trials ------------------------------------------------------

    async def direct_endpoint(
        self,
        peer: PeerEntry,
        attempt: paths.PeerPath,
        seen: PeerStats | None,
        direct: UnderlayEndpoint | None,
        now: datetime,
    ) -> UnderlayEndpoint | None:
        """Feed the peer's endpoint trial (a new one per direct attempt); its endpoint.

        A trial that starts while the controller already holds a live direct session (it
        moved there on direct evidence) starts confirmed where the tunnel is."""
        policy = self.settings.trial_policy
        order = trials.punch_order(self._own_candidates(), peer.candidates)
        held = self.state.trials.get(peer.id)
        self.state.windows.pop(peer.id, None)
        effects: tuple[trials.TrialEffect, ...] = ()
        handshake = seen.last_handshake if seen is not None else None
        if held is not None and held[0] == attempt.since:
            trial, effects = trials.reorder(
                policy, held[1], order, now, last_handshake=handshake, current=direct
            )
        elif attempt.last_seen is not None and direct is not None:
            trial = trials.TrialState.already_confirmed(order, direct, attempt.last_seen, now)
        else:
            trial, effects = trials.TrialState.start(policy, order, now)
        trial, more = trials.observe(policy, trial, now, handshake, direct)
        self.state.trials[peer.id] = (attempt.since, trial)
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
                self.state.restart.add(peer.tunnel_key)

    # --- while relayed: probe windows ------------------------------------------------------------

    async def open_window(self, peer: PeerEntry, deadline: datetime, now: datetime) -> None:
        """A relayed probe: point at the next candidate until `deadline`, punch, nudge."""
        s, policy = self.state, self.settings.trial_policy
        s.trials.pop(peer.id, None)
        order = trials.punch_order(self._own_candidates(), peer.candidates)
        if not order:
            return
        count = s.opened.get(peer.id, 0)
        s.opened[peer.id] = count + 1
        s.windows[peer.id] = Window(order[count % len(order)], deadline, now + NUDGE_DELAY)
        s.pointed[peer.id] = now
        await self.puncher.punch(order, policy.punch_packets)
        self.nudge(peer, now)

    def relayed_endpoint(
        self, peer: PeerEntry, bridge: UnderlayEndpoint, now: datetime
    ) -> UnderlayEndpoint | None:
        """Where a relayed peer's tunnel should point: the bridge, a window's candidate, or
        None (a window past its nudge: leave the endpoint to the tunnel)."""
        s = self.state
        window = s.windows.get(peer.id)
        if window is None:
            return bridge
        if now >= window.deadline:
            del s.windows[peer.id]
            return bridge
        if window.nudged:
            return None
        if now >= window.nudge_at:  # the keepalive goes out where the tunnel points now
            s.windows[peer.id] = attrs.evolve(window, nudged=True)
            return None
        s.pointed[peer.id] = now
        return window.target

    def relay_unconfirmed(self, peer: PeerEntry, since: datetime, now: datetime) -> None:
        """A relayed peer with no handshake through the relay yet (the stint began at
        `since`): re-kick every `RELAY_REKICK`, at most `RELAY_REKICKS` times, from the side
        that speaks first."""
        s, own = self.state, self._own_key()
        began, kicks = s.relay_kicks.get(peer.id, (since, 0))
        if began != since:
            began, kicks = since, 0
        if kicks < RELAY_REKICKS and now - began >= (kicks + 1) * RELAY_REKICK:
            kicks += 1
            if own is not None and reconcile.initiates(own, peer.tunnel_key):
                s.restart.add(peer.tunnel_key)
        s.relay_kicks[peer.id] = (began, kicks)

    def left_relay(self, peer: PeerEntry, now: datetime) -> None:
        """The peer moved to the direct path on direct evidence: tell it at once (a nudge:
        our keepalive goes out now, to where the tunnel roamed)."""
        s = self.state
        s.windows.pop(peer.id, None)
        s.pointed.pop(peer.id, None)
        self.nudge(peer, now)

    def quiet_now(self, now: datetime) -> frozenset[TunnelKey]:
        """Peers whose keepalive is off in this plan (a nudge lasts until its time)."""
        s = self.state
        s.quiet = {k: until for k, until in s.quiet.items() if now < until}
        return frozenset(s.quiet)

    def take_restarts(self) -> set[TunnelKey]:
        """Peers due a fresh session (cleared)."""
        restart, self.state.restart = self.state.restart, set()
        return restart


__all__ = [
    "NUDGE_DELAY",
    "STALL_MARGIN",
    "WINDOW_READS",
    "PunchState",
    "Punching",
    "Read",
    "Window",
]
