"""The node's reconciliation planner: accepted peer map → desired tunnel state → minimal actions.

The one rule: the planner is pure and total. `desired_state` derives everything the tunnel and
the firewall should hold from one accepted `PeerMap` and the node's own key; `plan` compares it
with what the backends report and returns only the actions that change something, so applying
a plan to `actual` yields `desired`, and re-planning after that yields no actions.

Theory of operation.

* Desired state: one `PeerConfig` per map peer (key, overlay prefixes, maybe an underlay
  endpoint and a keepalive), routes = the union of the peers' overlay prefixes, addresses =
  the node's own overlay addresses, and the `Ruleset` compiled from the map's inbound rules.
* Handshake collision (docs/lab.md pitfall 1): if both ends of a pair start a handshake at the same
  instant, the crossing responses are rejected and traffic waits for the 5 s retry, which may
  collide again. So exactly one side of every pair speaks first: the side whose tunnel key
  sorts lower (`initiates(own, peer)`, a strict total order, so for two distinct keys exactly
  one of `initiates(a, b)` and `initiates(b, a)` holds). The initiator's peer config carries
  the peer's underlay endpoint and a keepalive, so the tunnel handshakes as soon as the peer is
  configured. The responder's config for that peer carries the endpoint but NO keepalive: the
  tunnel does not speak on its own, so the map arriving on both ends at once cannot make both
  initiate; but the responder's own traffic starts a handshake at once (a restarted responder
  whose peer still holds a stale session must not wait: the peer has no reason to initiate,
  and waiting cost ~4 s per restart in the e2e lab). Once the responder has heard from the
  initiator (a handshake is seen in the stats), the keepalive is added, so the session is kept
  alive from both ends (sessions re-key one at a time, long after the first handshake, so the
  crossing start-up race cannot recur). If the initiator stays silent for longer than a grace
  period (it may not have our key yet, or cannot reach us), the agent lists the peer as
  `overdue` and the responder's keepalive starts a handshake anyway: staggered by the grace
  period, not simultaneous.
* Actions, in the order they must run: `SetRuleset` (the filter tightens before peers change:
  fail closed), `SetAddresses`, `RemovePeer`s, `AddPeer`s/`UpdatePeer`s, `SetRoutes`. Peer
  actions name one peer each; a one-peer change in the map yields exactly one peer action (and
  a route change only for that peer's prefixes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final, TypeAlias

import attrs

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.keys import TunnelKey, TunnelPrivateKey
from rustynet.domain.netmap import PeerEntry, PeerMap
from rustynet.domain.packet_filter import Ruleset
from rustynet.domain.tunnel import (
    InterfaceConfig,
    IPInterface,
    IPNetwork,
    PeerConfig,
    PeerDiff,
    UnderlayEndpoint,
    canonical_interfaces,
    canonical_networks,
    diff_peers,
)

DEFAULT_KEEPALIVE_SECONDS: Final = 5
"""Each side of a live session sends at least this often: the keepalives are the evidence the
path controller reads to tell a live direct path from a dead one behind any NAT (a probe to
another port would not cross the NAT's mapping), and they keep that mapping open (many NATs
drop an idle UDP mapping after 30 s). One 32-byte packet per 5 s per peer."""
DEFAULT_RESPONDER_GRACE: Final = timedelta(seconds=3)
"""How long a responder waits for the initiator before it initiates itself (under the 5 s
handshake retry, so a silent initiator costs less than one collision would)."""


class PlanError(LocalProtocolError):
    """A planner input breaks a rule (e.g. a map that gives one prefix to two peers)."""


def key_order(key: TunnelKey) -> tuple[str, bytes]:
    """The total order of tunnel keys used to pick the initiator of each pair."""
    return (key.scheme.value, key.raw)


def initiates(own: TunnelKey, peer: TunnelKey) -> bool:
    """True when this node speaks first to `peer`: its own key sorts strictly lower."""
    return key_order(own) < key_order(peer)


def overdue_responders(
    listed_since: Mapping[TunnelKey, datetime],
    heard_from: Iterable[TunnelKey],
    now: datetime,
    grace: timedelta = DEFAULT_RESPONDER_GRACE,
) -> frozenset[TunnelKey]:
    """Peers listed for at least `grace` that we have not heard from: initiate to them too."""
    heard = frozenset(heard_from)
    return frozenset(
        k for k, since in listed_since.items() if k not in heard and now - since >= grace
    )


def first_endpoint(entry: PeerEntry) -> UnderlayEndpoint | None:
    """The endpoint to reach a peer at directly: its first candidate in preference order."""
    return next(iter(entry.endpoints), None)


# --- desired and actual state ----------------------------------------------------------------


@attrs.frozen
class DesiredState:
    """What the tunnel interface and the firewall should hold."""

    addresses: tuple[IPInterface, ...] = attrs.field(converter=canonical_interfaces)
    peers: tuple[PeerConfig, ...]
    routes: tuple[IPNetwork, ...] = attrs.field(converter=canonical_networks)
    ruleset: Ruleset
    initiator_for: frozenset[TunnelKey] = frozenset()
    """Peers this node speaks first to (by key order, or because they are overdue)."""

    def __attrs_post_init__(self) -> None:
        keys = [p.key for p in self.peers]
        if len(set(keys)) != len(keys):
            raise PlanError("a peer appears twice in the desired state")

    def peer_map(self) -> dict[TunnelKey, PeerConfig]:
        """The desired peers by key."""
        return {p.key: p for p in self.peers}


@attrs.frozen
class ActualState:
    """What the backends report (or, in the pure model, what the applied actions produced)."""

    addresses: tuple[IPInterface, ...] = attrs.field(default=(), converter=canonical_interfaces)
    peers: Mapping[TunnelKey, PeerConfig] = attrs.field(factory=dict)
    routes: tuple[IPNetwork, ...] = attrs.field(default=(), converter=canonical_networks)
    ruleset: Ruleset | None = None


EMPTY: Final = ActualState()


def desired_state(
    peer_map: PeerMap,
    own_key: TunnelKey,
    *,
    heard_from: Iterable[TunnelKey] = (),
    overdue: Iterable[TunnelKey] = (),
    keepalive_seconds: int = DEFAULT_KEEPALIVE_SECONDS,
    endpoints: Mapping[TunnelKey, UnderlayEndpoint] | None = None,
    learned: Iterable[TunnelKey] = (),
    quiet: Iterable[TunnelKey] = (),
) -> DesiredState:
    """Everything the node should hold for `peer_map` (see the module docstring).

    `heard_from`: peers a handshake was seen with; `overdue`: peers whose initiator stayed
    silent past the grace period (`overdue_responders`); `endpoints`: peers to reach at another
    endpoint than the map's first (the relay bridge or an endpoint trial's choice, by the path
    controller); `learned`: peers whose endpoint is left to the tunnel (no endpoint in their
    config: a relayed probe window); `quiet`: peers whose keepalive is off in this plan (a
    nudge: switched on again in the next plan, the tunnel sends a keepalive at once).
    """
    heard, late = frozenset(heard_from), frozenset(overdue)
    leave, hush = frozenset(learned), frozenset(quiet)
    peers: list[PeerConfig] = []
    speak_first: set[TunnelKey] = set()
    for entry in peer_map.peers:
        if entry.tunnel_key == own_key:
            raise PlanError("a peer has this node's own tunnel key")
        first = initiates(own_key, entry.tunnel_key) or entry.tunnel_key in late
        if first:
            speak_first.add(entry.tunnel_key)
        talk = first or entry.tunnel_key in heard
        chosen = endpoints.get(entry.tunnel_key) if endpoints else None
        left = entry.tunnel_key in leave and chosen is None
        endpoint = None if left else chosen or first_endpoint(entry)
        keepalive = talk and (endpoint is not None or left) and entry.tunnel_key not in hush
        peers.append(
            PeerConfig(
                key=entry.tunnel_key,
                overlay_prefixes=entry.overlay_addresses,
                underlay_endpoint=endpoint,
                keepalive_seconds=keepalive_seconds if keepalive else None,
            )
        )
    peers.sort(key=lambda p: key_order(p.key))
    routes = [n for p in peers for n in p.overlay_prefixes]
    if len(set(routes)) != len(routes):
        raise PlanError("the peer map gives one overlay prefix to two peers")
    return DesiredState(
        addresses=[_address(a) for a in peer_map.self_entry.overlay_addresses],
        peers=tuple(peers),
        routes=routes,
        ruleset=Ruleset.from_inbound(peer_map.inbound),
        initiator_for=frozenset(speak_first),
    )


def _address(prefix: str) -> IPInterface:
    """The node's own overlay prefix (`100.64.0.7/32`) as an interface address."""
    return ipaddress.ip_interface(prefix)


def empty_desired(addresses: Iterable[IPInterface | str] = ()) -> DesiredState:
    """No peers, no routes, nothing admitted (an expired map or a revoked node)."""
    return DesiredState(
        addresses=canonical_interfaces(addresses), peers=(), routes=(), ruleset=Ruleset()
    )


def interface_config(
    name: str,
    private_key: TunnelPrivateKey,
    desired: DesiredState,
    underlay_port: int | None = None,
) -> InterfaceConfig:
    """The interface to start for `desired` (the private key stays owned by the caller)."""
    return InterfaceConfig(
        name=name,
        private_key=private_key,
        underlay_port=underlay_port,
        addresses=desired.addresses,
        routes=desired.routes,
    )


# --- actions ---------------------------------------------------------------------------------


@attrs.frozen
class SetRuleset:
    """Replace the firewall's inbound rules."""

    ruleset: Ruleset


@attrs.frozen
class SetAddresses:
    """Replace the interface's addresses."""

    addresses: tuple[IPInterface, ...]


@attrs.frozen
class RemovePeer:
    """Remove one peer."""

    key: TunnelKey


@attrs.frozen
class AddPeer:
    """Add one peer."""

    peer: PeerConfig


@attrs.frozen
class UpdatePeer:
    """Change one peer in place (prefixes, endpoint, keepalive)."""

    peer: PeerConfig


@attrs.frozen
class SetRoutes:
    """Replace the routes through the interface."""

    routes: tuple[IPNetwork, ...]


Action: TypeAlias = SetRuleset | SetAddresses | RemovePeer | AddPeer | UpdatePeer | SetRoutes
PeerAction: TypeAlias = RemovePeer | AddPeer | UpdatePeer


def _peer_actions(diff: PeerDiff) -> list[Action]:
    out: list[Action] = [RemovePeer(k) for k in diff.remove]
    out += [AddPeer(p) for p in diff.add]
    out += [UpdatePeer(p) for p in diff.update]
    return out


def plan(desired: DesiredState, actual: ActualState) -> tuple[Action, ...]:
    """The minimal ordered actions turning `actual` into `desired` (empty when they agree)."""
    actions: list[Action] = []
    if actual.ruleset != desired.ruleset:
        actions.append(SetRuleset(desired.ruleset))
    if actual.addresses != desired.addresses:
        actions.append(SetAddresses(desired.addresses))
    actions += _peer_actions(diff_peers(actual.peers, desired.peers))
    if actual.routes != desired.routes:
        actions.append(SetRoutes(desired.routes))
    return tuple(actions)


def peer_diff(actions: Iterable[Action]) -> PeerDiff:
    """The peer actions of a plan as one diff for `TunnelBackend.apply`."""
    add: list[PeerConfig] = []
    update: list[PeerConfig] = []
    remove: list[TunnelKey] = []
    for action in actions:
        if isinstance(action, AddPeer):
            add.append(action.peer)
        elif isinstance(action, UpdatePeer):
            update.append(action.peer)
        elif isinstance(action, RemovePeer):
            remove.append(action.key)
    return PeerDiff(add=tuple(add), update=tuple(update), remove=tuple(remove))


def apply_actions(actual: ActualState, actions: Iterable[Action]) -> ActualState:
    """The pure model of running `actions` against backends that hold `actual`."""
    peers = dict(actual.peers)
    addresses, routes, ruleset = actual.addresses, actual.routes, actual.ruleset
    for action in actions:
        match action:
            case SetRuleset(ruleset=new_rules):
                ruleset = new_rules
            case SetAddresses(addresses=new_addresses):
                addresses = new_addresses
            case RemovePeer(key=key):
                peers.pop(key, None)
            case AddPeer(peer=peer) | UpdatePeer(peer=peer):
                peers[peer.key] = peer
            case SetRoutes(routes=new_routes):
                routes = new_routes
    return ActualState(addresses=addresses, peers=peers, routes=routes, ruleset=ruleset)
