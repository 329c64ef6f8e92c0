"""A relayed peer's UDP relay leg: whether its tunnel sends straight to the relay's UDP port for
the pair (`relay-udp`) or through the WebSocket session (`relay-wss`), and what to do next.

The one rule (authenticated before trusted): the tunnel is pointed only at the address the
relay granted over the authenticated relay session, and `relay-udp` stands only on the
tunnel's own evidence: the receive counter grew while the tunnel's endpoint for the peer was
that address, and either the previous read saw it there too or the plan before pointed the
tunnel elsewhere (then only the tunnel itself moved it, which it does on authenticated packets
only). Without that evidence the peer goes through the WebSocket session, which works wherever
the relay's TCP port does.

Theory of operation, per relayed peer (`UdpLeg`; pure, fed by
`rustynet.application.node.relay_udp`):

* ASKING: the node asked the relay for the pair's allocation (both ends ask; the relay installs
  forwarding once both have bound). `granted` → TRYING; `refused` → RESTING.
* TRYING (`UdpLegPolicy.trial`): the tunnel points at the relay address; `Bind` datagrams go
  out from the tunnel port at `bind_at` offsets (each with a larger counter: the relay
  accepts a bind only above the last one) and `Nudge`s at `nudge_at` (the tunnel sends a
  keepalive at once), so both ends' first packets cross even when the peer binds a little
  later. Evidence → UP; none by the end → RESTING.
* UP: stays while evidence keeps coming (at most `stale` apart: keepalives are evidence);
  re-binds every `rebind_every` (a NAT that rebinds the tunnel's mapping gets the new source
  bound); no evidence for `stale`, or the peer's packets arriving through the WebSocket bridge
  while the plan pointed at the UDP port with no evidence for `elsewhere` (the peer went back
  to the WebSocket: its relay session, and with it the pair's allocation, may be gone) →
  RESTING. Entering UP nudges the tunnel: our next packet through the UDP port is what brings
  a peer whose own trial ended a moment early over to it.
* RESTING: the tunnel goes through the WebSocket session; evidence while resting (the peer's
  packets arrived through the UDP port and the tunnel moved there by itself) → UP at once.
  After `retry` (doubling from `retry_first` to `retry_max`) the caller asks the relay again
  (ASKING: the allocation may have been replaced; asking again for a live one costs nothing)
  and a grant starts a new trial.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Final, TypeAlias

import attrs

from rustynet.domain.tunnel import UnderlayEndpoint

DEFAULT_TRIAL: Final = timedelta(seconds=1)
"""Long enough for the peer's binds to arrive (both ends start their trials when their relay
path is confirmed, within a tick of each other) and for two reads of the tunnel after the
nudged keepalives; short, as the tunnel's packets to the peer are lost for its length where
UDP to the relay is blocked (once per retry). A peer whose trial starts later still gets
through: its packets reach us through the UDP port, our tunnel moves there by itself, and that
is evidence while resting."""

_MS = timedelta(milliseconds=1)
DEFAULT_BIND_AT: Final = (0 * _MS, 300 * _MS, 600 * _MS)
DEFAULT_NUDGE_AT: Final = (0 * _MS, 300 * _MS, 600 * _MS)
DEFAULT_RETRY_FIRST: Final = timedelta(seconds=10)
DEFAULT_RETRY_MAX: Final = timedelta(seconds=120)
DEFAULT_ELSEWHERE: Final = timedelta(seconds=7)
"""An up leg whose peer's packets come through the bridge, with nothing through the UDP port
for this long (over one keepalive interval), rests: the peer went back to the WebSocket. Shorter
would also end a leg whose peer is about to follow (its trial ended a moment early; our next
packet through the UDP port, a nudge at the latest, brings it over)."""

DEFAULT_REBIND_EVERY: Final = timedelta(seconds=25)
"""Under the 30 s UDP timeout of common NATs: a rebinding NAT's new mapping is bound before a
peer's traffic to the old one is lost for long."""


class LegPhase(enum.Enum):
    """Where a relayed peer's UDP leg is."""

    ASKING = "asking"
    TRYING = "trying"
    UP = "up"
    RESTING = "resting"


@attrs.frozen
class UdpLegPolicy:
    """The timings of UDP legs; `stale` is the direct path's evidence window (keepalives)."""

    stale: timedelta
    trial: timedelta = DEFAULT_TRIAL
    bind_at: tuple[timedelta, ...] = DEFAULT_BIND_AT
    nudge_at: tuple[timedelta, ...] = DEFAULT_NUDGE_AT
    retry_first: timedelta = DEFAULT_RETRY_FIRST
    retry_max: timedelta = DEFAULT_RETRY_MAX
    rebind_every: timedelta = DEFAULT_REBIND_EVERY
    elsewhere: timedelta = DEFAULT_ELSEWHERE


@attrs.frozen
class Bind:
    """Send a bind datagram with this counter from the tunnel port to the relay address."""

    counter: int


@attrs.frozen
class Nudge:
    """Make the tunnel send a keepalive to the peer now."""


LegEffect: TypeAlias = Bind | Nudge


@attrs.frozen
class Read:
    """One read of the tunnel for the peer: its endpoint is the relay address (or the bridge's),
    its receive counter."""

    at_relay: bool
    rx: int
    at_bridge: bool = False


@attrs.frozen
class UdpLeg:
    """One relayed peer's leg (see the module docstring)."""

    phase: LegPhase
    since: datetime
    endpoint: UnderlayEndpoint | None = None
    retry: timedelta | None = None
    counter: int = 0
    binds: int = 0
    """Binds sent in this trial (the offsets of `UdpLegPolicy.bind_at` used up)."""
    nudges: int = 0
    bound: datetime | None = None
    """When the last bind went out."""
    evidence: datetime | None = None
    read: Read | None = None
    pointed: bool = False
    """The last plan pointed the tunnel at the relay address."""

    @classmethod
    def asking(cls, now: datetime) -> UdpLeg:
        """A leg whose ask went out at `now`."""
        return cls(LegPhase.ASKING, now)

    @property
    def points_at_relay(self) -> bool:
        """The tunnel should send to the relay address now (TRYING or UP)."""
        return self.endpoint is not None and self.phase in (LegPhase.TRYING, LegPhase.UP)

    def retry_due(self, now: datetime) -> bool:
        """A resting leg whose retry time came: ask the relay again."""
        return (
            self.phase is LegPhase.RESTING
            and self.retry is not None
            and now - self.since >= self.retry
        )

    def due(self, policy: UdpLegPolicy) -> datetime | None:
        """When this leg next needs a plan sooner than the regular tick (None: no hurry)."""
        if self.phase is LegPhase.TRYING:
            offsets = [*policy.bind_at[self.binds :], *policy.nudge_at[self.nudges :]]
            return self.since + min([*offsets, policy.trial])
        if self.phase is LegPhase.RESTING and self.retry is not None:
            return self.since + self.retry
        return None


def _counter(leg: UdpLeg, now: datetime) -> int:
    """The next bind counter: above the last one, and above any an earlier run of this node
    could have used (milliseconds since the epoch), so a restarted node is never a replay."""
    return max(leg.counter + 1, int(now.timestamp() * 1000))


def granted(
    policy: UdpLegPolicy, leg: UdpLeg, endpoint: UnderlayEndpoint, now: datetime
) -> tuple[UdpLeg, tuple[LegEffect, ...]]:
    """The relay granted our side at `endpoint`: start trying it (the backoff of earlier
    failed trials carries over; only evidence resets it)."""
    del policy
    return _try(attrs.evolve(leg, endpoint=endpoint), now)


def refused(policy: UdpLegPolicy, leg: UdpLeg, now: datetime) -> UdpLeg:
    """The ask failed (refused, or the session ended): rest, then ask again."""
    return _rest(policy, leg, now)


def _try(leg: UdpLeg, now: datetime) -> tuple[UdpLeg, tuple[LegEffect, ...]]:
    counter = _counter(leg, now)
    tried = attrs.evolve(
        leg,
        phase=LegPhase.TRYING,
        since=now,
        counter=counter,
        binds=1,
        nudges=1,
        bound=now,
        pointed=True,
    )
    return tried, (Bind(counter), Nudge())


def _rest(policy: UdpLegPolicy, leg: UdpLeg, now: datetime) -> UdpLeg:
    retry = policy.retry_first if leg.retry is None else min(2 * leg.retry, policy.retry_max)
    return attrs.evolve(leg, phase=LegPhase.RESTING, since=now, retry=retry, pointed=False)


def _went_elsewhere(policy: UdpLegPolicy, leg: UdpLeg, read: Read, now: datetime) -> bool:
    """Up, pointed at the UDP port, the peer's packets came through the bridge since, and
    nothing came through the UDP port for `policy.elsewhere`."""
    before = leg.read
    return (
        leg.phase is LegPhase.UP
        and leg.pointed
        and read.at_bridge
        and before is not None
        and read.rx > before.rx
        and (leg.evidence is None or now - leg.evidence >= policy.elsewhere)
    )


def _evidence(leg: UdpLeg, read: Read) -> bool:
    before = leg.read
    if before is None or not read.at_relay or read.rx <= before.rx:
        return False
    return before.at_relay or not leg.pointed


def observe(
    policy: UdpLegPolicy, leg: UdpLeg, now: datetime, read: Read | None
) -> tuple[UdpLeg, tuple[LegEffect, ...]]:
    """One tick with the tunnel's read for the peer (None: the tunnel has no such peer)."""
    effects: list[LegEffect] = []
    if read is not None and _went_elsewhere(policy, leg, read, now):
        leg = _rest(policy, attrs.evolve(leg, read=read), now)
    if read is not None and leg.endpoint is not None and _evidence(leg, read):
        if leg.phase is not LegPhase.UP:
            leg = attrs.evolve(leg, phase=LegPhase.UP, since=now, retry=None)
            effects.append(Nudge())
        leg = attrs.evolve(leg, evidence=now)
    leg = attrs.evolve(leg, read=read)
    if leg.phase is LegPhase.TRYING:
        elapsed = now - leg.since
        if elapsed >= policy.trial:
            leg = _rest(policy, leg, now)
        else:
            if leg.binds < len(policy.bind_at) and elapsed >= policy.bind_at[leg.binds]:
                counter = _counter(leg, now)
                leg = attrs.evolve(leg, binds=leg.binds + 1, counter=counter, bound=now)
                effects.append(Bind(counter))
            if leg.nudges < len(policy.nudge_at) and elapsed >= policy.nudge_at[leg.nudges]:
                leg = attrs.evolve(leg, nudges=leg.nudges + 1)
                effects.append(Nudge())
    elif leg.phase is LegPhase.UP:
        if leg.evidence is None or now - leg.evidence > policy.stale:
            leg = _rest(policy, leg, now)
        elif leg.bound is None or now - leg.bound >= policy.rebind_every:
            counter = _counter(leg, now)
            leg = attrs.evolve(leg, counter=counter, bound=now)
            effects.append(Bind(counter))
    return attrs.evolve(leg, pointed=leg.points_at_relay), tuple(effects)


__all__ = [
    "Bind",
    "LegEffect",
    "LegPhase",
    "Nudge",
    "Read",
    "UdpLeg",
    "UdpLegPolicy",
    "granted",
    "observe",
    "refused",
]
