"""Candidate endpoints: where a node may be reached, each tagged with how it was found.

The one rule (every reported, stored, signed or gathered candidate passes it, here only):
a candidate is an `UnderlayEndpoint` (IPv4 or IPv6 literal, port 1..65535, no zone id) whose
address is a unicast address a peer could send to: never unspecified, loopback, link-local or
multicast (nor IPv4 broadcast); a node reports at most `MAX_CANDIDATES` distinct candidates.

Kinds: `configured` (typed into `underlay_endpoints`), `local` (an address of one of the node's
interfaces with the tunnel port), `reflexive` (the public address and port a NAT maps the
tunnel port to, as a STUN service saw it). Peers try them in `PREFERENCE` order.

`EndpointKind` is the same vocabulary as status and logs show it for the endpoint a tunnel
uses: the three candidate kinds (same values) plus `ipv6` (a local or reflexive candidate whose
address is IPv6: no NAT maps it, so where it was found matters less than its family) and
`peer-observed` (an endpoint that is none of the peer's candidates: the tunnel roamed to where
the peer's packets came from). `endpoint_kind` decides which.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from typing import Final

import attrs

from rustynet.domain.errors import DecodeError
from rustynet.domain.tunnel import IPAddress, IPNetwork, UnderlayEndpoint

MAX_CANDIDATES: Final = 16  # candidates one node may report (all kinds together)


class CandidateError(DecodeError):
    """A candidate, or a list of them, breaks the rule above."""


class CandidateKind(enum.Enum):
    """How a node found a candidate."""

    CONFIGURED = "configured"
    LOCAL = "local"
    REFLEXIVE = "reflexive"


class EndpointKind(enum.Enum):
    """How the endpoint a tunnel uses for a peer is known (status, logs): see the module doc."""

    CONFIGURED = "configured"
    LOCAL = "local"
    REFLEXIVE = "reflexive"
    IPV6 = "ipv6"
    PEER_OBSERVED = "peer-observed"


def endpoint_kind(endpoint: UnderlayEndpoint, candidates: Iterable[Candidate]) -> EndpointKind:
    """The kind of `endpoint` among a peer's `candidates`: its candidate's kind (`ipv6` for a
    local or reflexive IPv6 one; what an operator typed stays `configured`), `peer-observed`
    when it is none of them."""
    found = next((c for c in candidates if c.endpoint == endpoint), None)
    if found is None:
        return EndpointKind.PEER_OBSERVED
    if found.kind is not CandidateKind.CONFIGURED and endpoint.address.version == 6:
        return EndpointKind.IPV6
    return EndpointKind(found.kind.value)


# Until path selection probes candidates ([punch]), peers use the first in this order: what an
# operator typed wins (today's behaviour), then the NAT-mapped address, then interface addresses.
PREFERENCE: Final = (CandidateKind.CONFIGURED, CandidateKind.REFLEXIVE, CandidateKind.LOCAL)


_UNUSABLE: Final = (
    ("is_unspecified", "unspecified address"),
    ("is_loopback", "loopback address"),
    ("is_link_local", "link-local address"),
    ("is_multicast", "multicast address"),
)


def unusable(address: IPAddress) -> str | None:
    """Why no peer can send to `address` (None when it is a usable unicast address)."""
    for test, why in _UNUSABLE:
        if getattr(address, test):
            return why
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return "IPv4-mapped IPv6 address"
    return None


def _usable(_: object, __: attrs.Attribute[UnderlayEndpoint], value: UnderlayEndpoint) -> None:
    if not isinstance(value, UnderlayEndpoint):
        raise CandidateError("a candidate endpoint is an UnderlayEndpoint")
    problem = unusable(value.address)
    if problem is not None:
        raise CandidateError(f"{value}: {problem}")


@attrs.frozen(order=True)
class Candidate:
    """One endpoint where the node may be reached, and how it was found."""

    endpoint: UnderlayEndpoint = attrs.field(validator=_usable)
    kind: CandidateKind = attrs.field(validator=attrs.validators.instance_of(CandidateKind))

    @classmethod
    def parse(cls, endpoint: object, kind: object) -> Candidate:
        """From wire texts (`"198.51.100.2:41641"`, `"local"`); raises `CandidateError`."""
        if not isinstance(endpoint, str):
            raise CandidateError("a candidate endpoint is a string")
        try:
            parsed = UnderlayEndpoint.parse(endpoint)
        except DecodeError as exc:
            raise CandidateError(str(exc)) from None
        try:
            found = CandidateKind(kind)
        except ValueError:
            raise CandidateError("kind is one of configured, local, reflexive") from None
        return cls(parsed, found)

    def to_json(self) -> dict[str, str]:
        """Wire, storage and peer-map form."""
        return {"endpoint": self.endpoint.to_text(), "kind": self.kind.value}


def candidate_set(values: Iterable[Candidate]) -> tuple[Candidate, ...]:
    """Distinct endpoints (the first kind listed wins), at most `MAX_CANDIDATES`, in order."""
    out: dict[UnderlayEndpoint, Candidate] = {}
    for candidate in values:
        if not isinstance(candidate, Candidate):
            raise CandidateError("expected Candidate values")
        out.setdefault(candidate.endpoint, candidate)
    if len(out) > MAX_CANDIDATES:
        raise CandidateError(f"at most {MAX_CANDIDATES} candidates")
    return tuple(out.values())


def preferred(candidates: Iterable[Candidate]) -> tuple[UnderlayEndpoint, ...]:
    """The endpoints in the order a peer tries them (`PREFERENCE`, then as listed)."""
    ranked = sorted(enumerate(candidates), key=lambda ic: (PREFERENCE.index(ic[1].kind), ic[0]))
    return tuple(c.endpoint for _, c in ranked)


def local_candidates(
    addresses: Iterable[IPAddress], port: int, exclude: Iterable[IPNetwork] = ()
) -> tuple[Candidate, ...]:
    """`local` candidates from interface addresses: usable ones not in an excluded prefix."""
    excluded = tuple(exclude)
    out = []
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            continue  # a zoned address is link-scoped
        if unusable(address) is not None:
            continue
        if any(address.version == net.version and address in net for net in excluded):
            continue
        out.append(Candidate(UnderlayEndpoint(address, port), CandidateKind.LOCAL))
    return tuple(out)


def gathered(
    configured: Iterable[Candidate],
    reflexive: Iterable[Candidate],
    local: Iterable[Candidate],
) -> tuple[Candidate, ...]:
    """What a node reports: configured, reflexive, then local, bounded by `MAX_CANDIDATES`.

    Configured endpoints are an override: when there are any, nothing is gathered besides them
    and the reflexive ones. Gathered candidates beyond the bound are dropped (not an error: a
    host with many addresses still reports the first ones).
    """
    first = candidate_set((*configured, *reflexive))
    rest = () if any(c.kind is CandidateKind.CONFIGURED for c in first) else tuple(local)
    seen = {c.endpoint for c in first}
    extra = [c for c in rest if c.endpoint not in seen]
    return candidate_set((*first, *extra)[:MAX_CANDIDATES])


__all__ = [
    "MAX_CANDIDATES",
    "PREFERENCE",
    "Candidate",
    "CandidateError",
    "CandidateKind",
    "EndpointKind",
    "candidate_set",
    "endpoint_kind",
    "gathered",
    "local_candidates",
    "preferred",
    "unusable",
]
