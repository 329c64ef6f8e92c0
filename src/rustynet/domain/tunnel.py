"""Tunnel values: interface and peer configuration, per-peer stats, and the peer diff.

The one rule: the tunnel is changed by diffs. `diff_peers(actual, desired)` returns the minimal
`PeerDiff`: a peer whose configuration is already satisfied is untouched, a one-peer change
touches exactly one peer, and applying the same desired state twice yields an empty diff.

Everything here is protocol-agnostic (tunnel keys, overlay prefixes, underlay endpoints,
keepalive); the tunnel adapter translates to its protocol. Values are canonical on
construction (prefixes strict, de-duplicated and sorted), so equality means "same config".
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final, TypeAlias

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.keys import TunnelKey, TunnelPrivateKey

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_KEEPALIVE_SECONDS: Final = 65535
INTERFACE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
"""Interface names: 1-15 characters (the Linux limit), no `/`, whitespace or leading dot."""


class TunnelConfigError(LocalProtocolError):
    """A tunnel value or a desired peer set breaks a rule (a bug or operator mistake)."""


class Capability(enum.Enum):
    """What a tunnel backend can do; asking for a missing one is refused before any change."""

    ROAMING = "roaming"
    """Peers may change underlay endpoint mid-session; the backend follows them."""
    RELAY_ENDPOINTS = "relay-endpoints"
    """Peers reachable through a relay transport instead of a direct underlay endpoint."""
    IPV6 = "ipv6"
    """IPv6 overlay prefixes, addresses, routes or underlay endpoints."""
    EXIT_ROUTING = "exit-routing"
    """Default routes (`/0` prefixes): sending internet traffic through a peer."""


def _port(_: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 65535:
        raise TunnelConfigError(f"{attribute.name} must be an integer port 1..65535")


@attrs.frozen(order=True)
class UnderlayEndpoint:
    """An underlay address and UDP port: `198.51.100.2:41641` or `[2001:db8::1]:41641`."""

    address: IPAddress = attrs.field(
        validator=attrs.validators.instance_of((ipaddress.IPv4Address, ipaddress.IPv6Address))
    )
    port: int = attrs.field(validator=_port)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.address, ipaddress.IPv6Address) and self.address.scope_id:
            raise TunnelConfigError("an underlay endpoint carries no IPv6 zone id")

    @classmethod
    def parse(cls, text: str) -> UnderlayEndpoint:
        """Parse `IPv4:port` or `[IPv6]:port` (no host names, no zone ids); raises DecodeError."""
        if not isinstance(text, str) or not text.isascii() or len(text) > 64:
            raise DecodeError("expected 198.51.100.2:41641 or [2001:db8::1]:41641")
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or len(port) > 5 or not 0 < int(port) <= 65535:
            raise DecodeError(f"bad underlay endpoint port in {text!r}")
        try:
            address: IPAddress
            if host.startswith("[") and host.endswith("]") and "%" not in host:
                address = ipaddress.IPv6Address(host[1:-1])
            else:
                address = ipaddress.IPv4Address(host)
        except ValueError as exc:
            raise DecodeError(f"bad underlay endpoint address in {text!r}") from exc
        return cls(address, int(port))

    def to_text(self) -> str:
        """Canonical text form (round-trips through `parse`)."""
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    def __str__(self) -> str:
        return self.to_text()


def _sort_key(net: IPNetwork | IPInterface) -> tuple[int, int, int]:
    if isinstance(net, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return (net.version, int(net.ip), net.network.prefixlen)
    return (net.version, int(net.network_address), net.prefixlen)


def canonical_networks(values: Iterable[IPNetwork | str]) -> tuple[IPNetwork, ...]:
    """Strict networks (no host bits), de-duplicated and sorted (IPv4 first)."""
    if isinstance(values, str):
        raise TunnelConfigError("expected a collection of prefixes, not one string")
    out: set[IPNetwork] = set()
    for value in values:
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            out.add(value)
            continue
        try:
            out.add(ipaddress.ip_network(value, strict=True))
        except (TypeError, ValueError) as exc:
            raise TunnelConfigError(f"not a prefix without host bits: {value!r}") from exc
    return tuple(sorted(out, key=_sort_key))


def canonical_interfaces(values: Iterable[IPInterface | str]) -> tuple[IPInterface, ...]:
    """Interface addresses (address + prefix length), de-duplicated and sorted."""
    if isinstance(values, str):
        raise TunnelConfigError("expected a collection of addresses, not one string")
    out: set[IPInterface] = set()
    for value in values:
        if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
            out.add(value)
            continue
        try:
            out.add(ipaddress.ip_interface(value))
        except (TypeError, ValueError) as exc:
            raise TunnelConfigError(f"not an interface address: {value!r}") from exc
    return tuple(sorted(out, key=_sort_key))


def _endpoint(value: UnderlayEndpoint | str | None) -> UnderlayEndpoint | None:
    if value is None or isinstance(value, UnderlayEndpoint):
        return value
    return UnderlayEndpoint.parse(value)


def _keepalive(_: object, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TunnelConfigError(f"{attribute.name} must be an integer or None")
    if not 0 < value <= MAX_KEEPALIVE_SECONDS:
        raise TunnelConfigError(f"{attribute.name} must be 1..{MAX_KEEPALIVE_SECONDS} or None")


@attrs.frozen
class PeerConfig:
    """One peer as the tunnel should hold it.

    `underlay_endpoint=None` means "learn it from the peer's first packet": a backend that
    reports a learned endpoint still satisfies such a config (see `satisfied_by`).
    """

    key: TunnelKey = attrs.field(validator=attrs.validators.instance_of(TunnelKey))
    overlay_prefixes: tuple[IPNetwork, ...] = attrs.field(converter=canonical_networks)
    underlay_endpoint: UnderlayEndpoint | None = attrs.field(default=None, converter=_endpoint)
    keepalive_seconds: int | None = attrs.field(default=None, validator=_keepalive)

    def satisfied_by(self, actual: PeerConfig) -> bool:
        """True when `actual` (read back from a backend) already is this configuration."""
        return (
            self.key == actual.key
            and self.overlay_prefixes == actual.overlay_prefixes
            and self.keepalive_seconds == actual.keepalive_seconds
            and (
                self.underlay_endpoint is None or self.underlay_endpoint == actual.underlay_endpoint
            )
        )


def _interface_name(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not INTERFACE_NAME.fullmatch(value) or value in {".", ".."}:
        raise TunnelConfigError(
            f"{attribute.name} must be 1-15 of A-Z a-z 0-9 _ . - starting with a letter/digit"
        )


def _optional_port(_: object, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is not None:
        _port(_, attribute, value)  # type: ignore[arg-type]


@attrs.frozen(eq=False)
class InterfaceConfig:
    """The local tunnel interface: name, private key, underlay UDP port, addresses, routes.

    `underlay_port=None` lets the backend pick a free port. The private key never shows in
    repr; the caller keeps ownership (and wipes it when the interface is gone).
    """

    name: str = attrs.field(validator=_interface_name)
    private_key: TunnelPrivateKey = attrs.field(
        repr=False, validator=attrs.validators.instance_of(TunnelPrivateKey)
    )
    underlay_port: int | None = attrs.field(default=None, validator=_optional_port)
    addresses: tuple[IPInterface, ...] = attrs.field(default=(), converter=canonical_interfaces)
    routes: tuple[IPNetwork, ...] = attrs.field(default=(), converter=canonical_networks)

    @property
    def public_key(self) -> TunnelKey:
        """The tunnel key peers know this interface by."""
        return self.private_key.public_key


def _nonneg(_: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TunnelConfigError(f"{attribute.name} must be a non-negative integer")


def _aware(_: object, attribute: attrs.Attribute[datetime | None], value: object) -> None:
    if value is not None and (not isinstance(value, datetime) or value.utcoffset() is None):
        raise TunnelConfigError(f"{attribute.name} must be a timezone-aware datetime or None")


@attrs.frozen
class PeerStats:
    """Counters a backend measured for one peer (never estimated)."""

    key: TunnelKey = attrs.field(validator=attrs.validators.instance_of(TunnelKey))
    last_handshake: datetime | None = attrs.field(validator=_aware)
    rx_bytes: int = attrs.field(validator=_nonneg)
    tx_bytes: int = attrs.field(validator=_nonneg)
    underlay_endpoint: UnderlayEndpoint | None = None


def _key_order(key: TunnelKey) -> tuple[str, bytes]:
    return (key.scheme.value, key.raw)


@attrs.frozen
class PeerDiff:
    """Peers to add, to update in place and to remove; each peer appears at most once."""

    add: tuple[PeerConfig, ...] = ()
    update: tuple[PeerConfig, ...] = ()
    remove: tuple[TunnelKey, ...] = ()

    def __attrs_post_init__(self) -> None:
        keys = [p.key for p in self.add] + [p.key for p in self.update] + list(self.remove)
        if len(set(keys)) != len(keys):
            raise TunnelConfigError("a peer appears more than once in one diff")

    @property
    def empty(self) -> bool:
        """True when applying this diff changes nothing."""
        return not (self.add or self.update or self.remove)

    @property
    def touched(self) -> int:
        """How many peers this diff changes."""
        return len(self.add) + len(self.update) + len(self.remove)

    def prefixes(self) -> tuple[IPNetwork, ...]:
        """Every overlay prefix the diff installs (for capability checks)."""
        return canonical_networks(n for p in (*self.add, *self.update) for n in p.overlay_prefixes)

    def endpoints(self) -> tuple[UnderlayEndpoint, ...]:
        """Every underlay endpoint the diff sets."""
        return tuple(p.underlay_endpoint for p in (*self.add, *self.update) if p.underlay_endpoint)


def diff_peers(actual: Mapping[TunnelKey, PeerConfig], desired: Iterable[PeerConfig]) -> PeerDiff:
    """The minimal diff turning `actual` into `desired` (pure; raises on a bad desired set).

    A desired set naming one key twice, or giving one overlay prefix to two peers (the tunnel
    would silently move it to whichever peer came last), is refused.
    """
    wanted: dict[TunnelKey, PeerConfig] = {}
    owner: dict[IPNetwork, TunnelKey] = {}
    for peer in desired:
        if not isinstance(peer, PeerConfig):
            raise TunnelConfigError("desired peers must be PeerConfig values")
        if peer.key in wanted:
            raise TunnelConfigError(f"peer {peer.key} is desired twice")
        for prefix in peer.overlay_prefixes:
            if prefix in owner:
                raise TunnelConfigError(f"overlay prefix {prefix} is given to two peers")
            owner[prefix] = peer.key
        wanted[peer.key] = peer
    add = [p for k, p in wanted.items() if k not in actual]
    update = [p for k, p in wanted.items() if k in actual and not p.satisfied_by(actual[k])]
    remove = [k for k in actual if k not in wanted]
    return PeerDiff(
        add=tuple(sorted(add, key=lambda p: _key_order(p.key))),
        update=tuple(sorted(update, key=lambda p: _key_order(p.key))),
        remove=tuple(sorted(remove, key=_key_order)),
    )


def required_capabilities(
    *,
    diff: PeerDiff | None = None,
    addresses: Iterable[IPInterface] = (),
    routes: Iterable[IPNetwork] = (),
) -> frozenset[Capability]:
    """Capabilities a change needs: IPv6 for any IPv6 value, exit routing for any `/0`."""
    needed: set[Capability] = set()
    nets: list[IPNetwork] = list(routes) + [a.network for a in addresses]
    if diff is not None:
        nets.extend(diff.prefixes())
        if any(e.address.version == 6 for e in diff.endpoints()):
            needed.add(Capability.IPV6)
    for net in nets:
        if net.version == 6:
            needed.add(Capability.IPV6)
        if net.prefixlen == 0:
            needed.add(Capability.EXIT_ROUTING)
    return frozenset(needed)
