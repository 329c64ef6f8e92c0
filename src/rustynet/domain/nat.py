"""NAT classification: what a node's STUN observations say about the NAT in front of it.

The one rule (`classify`, here only): from the mapped endpoints that STUN servers reported for
ONE local UDP port (the tunnel's, or an ephemeral one for a standalone netcheck), of one address
family:

- no server answered (and at least one was asked): `udp-blocked`;
- every answer maps to the local port on an address the host itself carries: `public` (no NAT);
- two or more answers, from destinations that differ in address or port, disagree on the
  mapped endpoint: `hard` (endpoint-dependent mapping: a peer cannot use what STUN saw);
- two or more answers from different destinations, all the same mapped endpoint:
  endpoint-independent mapping, `eim-port-preserving` when the mapped port is the local port,
  `eim` otherwise;
- anything that cannot tell these apart (no server asked, one destination only): `unknown`.

The STUN service answers on two ports of each host, so one server host already gives two
destinations. A NAT whose mapping depends on the destination address but not its port looks
endpoint-independent to two ports of one host; with two server hosts it is seen as `hard`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import attrs

from rustynet.domain.tunnel import IPAddress, UnderlayEndpoint


class NatClass(enum.Enum):
    """The NAT in front of a node's UDP port, as its wire and display value."""

    PUBLIC = "public"
    EIM_PORT_PRESERVING = "eim-port-preserving"
    EIM = "eim"
    HARD = "hard"
    UDP_BLOCKED = "udp-blocked"
    UNKNOWN = "unknown"

    @property
    def description(self) -> str:
        """One line a user can read (netcheck, admin show)."""
        return _DESCRIPTIONS[self]

    @property
    def direct_friendly(self) -> bool:
        """True when a peer can reach this node at the endpoint STUN saw (after a punch)."""
        return self in (NatClass.PUBLIC, NatClass.EIM_PORT_PRESERVING, NatClass.EIM)


_DESCRIPTIONS = {
    NatClass.PUBLIC: "no NAT: the local address and port are seen from outside",
    NatClass.EIM_PORT_PRESERVING: (
        "NAT with endpoint-independent mapping that keeps the local port (easy to traverse)"
    ),
    NatClass.EIM: "NAT with endpoint-independent mapping, port changed (easy to traverse)",
    NatClass.HARD: (
        "NAT with endpoint-dependent mapping: a new public port per destination (hard; "
        "direct only with a peer that is public or full cone, else relayed)"
    ),
    NatClass.UDP_BLOCKED: "no STUN server answered over UDP (blocked or unreachable)",
    NatClass.UNKNOWN: "not enough answers to tell (fewer than two STUN destinations)",
}


@attrs.frozen
class StunObservation:
    """One STUN server asked from one local port: what it saw (None: no valid answer in time)
    and the round trip in seconds."""

    server: UnderlayEndpoint
    mapped: UnderlayEndpoint | None
    rtt: float | None = None


@attrs.frozen
class NatReport:
    """A classification with the evidence it rests on."""

    nat: NatClass
    local_port: int
    reflexive: tuple[UnderlayEndpoint, ...]  # distinct mapped endpoints, in answer order
    observations: tuple[StunObservation, ...]

    @property
    def port_preserved(self) -> bool | None:
        """Whether the NAT kept the local port (None when nothing was mapped)."""
        if not self.reflexive:
            return None
        return all(e.port == self.local_port for e in self.reflexive)


def classify(
    observations: Sequence[StunObservation],
    local_port: int,
    local_addresses: Iterable[IPAddress],
) -> NatReport:
    """Classify the NAT in front of `local_port` from `observations` of one address family,
    given the addresses the host's interfaces carry (see the module doc for the rule)."""
    answered = [o for o in observations if o.mapped is not None]
    reflexive = tuple(dict.fromkeys(o.mapped for o in answered if o.mapped is not None))

    def report(nat: NatClass) -> NatReport:
        return NatReport(nat, local_port, reflexive, tuple(observations))

    if not observations:
        return report(NatClass.UNKNOWN)
    if not answered:
        return report(NatClass.UDP_BLOCKED)
    own = set(local_addresses)
    if all(e.address in own and e.port == local_port for e in reflexive):
        return report(NatClass.PUBLIC)
    if len(reflexive) > 1:
        return report(NatClass.HARD)
    if len({o.server for o in answered}) < 2:
        return report(NatClass.UNKNOWN)
    preserved = reflexive[0].port == local_port
    return report(NatClass.EIM_PORT_PRESERVING if preserved else NatClass.EIM)


def direct_unlikely(ours: NatClass | None, theirs: NatClass | None) -> bool:
    """True when no direct path can open between two nodes with these NAT classes: either side
    cannot send or receive UDP at all, or both map a new public port per destination (neither
    can tell the other where to send, and neither accepts from an unknown source). Anything
    unknown, and one hard side against an endpoint-independent one (a full-cone NAT lets the
    hard side's packets in), is worth a direct attempt."""
    if ours is None or theirs is None:
        return False
    if NatClass.UDP_BLOCKED in (ours, theirs):
        return True
    return ours is NatClass.HARD and theirs is NatClass.HARD


__all__ = ["NatClass", "NatReport", "StunObservation", "classify", "direct_unlikely"]
