"""What the two WireGuard backends share: capabilities, the link's addresses and routes
(through ip(8), `links.Links`), and peers/stats read back from one device read.

The backends differ only in how the device is driven: `wireguard_uapi` supervises
wireguard-go and speaks its UAPI socket, `wireguard_kernel` speaks generic netlink to the
kernel module. Each says whether its interface is up (`_check_running`, the interface name
or `TunnelError`) and reads its device (`_read_device`: config and counters per peer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import ClassVar, Final

from rustynet.adapters.tunnel.links import Links

from rustynet.domain.keys import TunnelKey
from rustynet.domain.tunnel import (
    Capability,
    InterfaceConfig,
    IPInterface,
    IPNetwork,
    PeerConfig,
    PeerStats,
    canonical_interfaces,
    canonical_networks,
    required_capabilities,
)
from rustynet.ports.tunnel import check_capabilities

CAPABILITIES: Final = frozenset(
    {Capability.ROAMING, Capability.IPV6, Capability.EXIT_ROUTING, Capability.RELAY_ENDPOINTS}
)

DeviceState = dict[TunnelKey, tuple[PeerConfig, PeerStats]]


class WireGuardBackendBase(ABC):
    """One WireGuard interface, optionally inside a network namespace; `change_operations`
    counts the device set requests that changed it."""

    backend_name: ClassVar[str]

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._links = Links(netns)
        self._interface: str | None = None
        self.change_operations = 0

    @property
    def name(self) -> str:
        """Backend name for `status`."""
        return self.backend_name

    @property
    def interface(self) -> str | None:
        """Name of the started interface, None when stopped."""
        return self._interface

    def capabilities(self) -> frozenset[Capability]:
        """Roaming, IPv6 and exit routing; relays are a separate transport."""
        return CAPABILITIES

    def require(self, *capabilities: Capability) -> None:
        """Raise `UnsupportedCapability` for any missing capability."""
        check_capabilities(self.name, CAPABILITIES, capabilities)

    @abstractmethod
    def _check_running(self) -> str:
        """The started interface's name; `TunnelError` when it is not (or no longer) up."""

    @abstractmethod
    async def _read_device(self) -> DeviceState:
        """Config and counters of every peer, read back from the device."""

    async def _configure_link(self, config: InterfaceConfig) -> None:
        """Addresses, link up, routes: the host side of `start`, after the device is set."""
        await self._links.set_addresses(config.name, config.addresses)
        await self._links.up(config.name)
        await self._links.set_routes(config.name, config.routes)

    async def peers(self) -> Mapping[TunnelKey, PeerConfig]:
        """Peers read back from the device."""
        return {key: config for key, (config, _) in (await self._read_device()).items()}

    async def stats(self) -> Mapping[TunnelKey, PeerStats]:
        """Counters read back from the device."""
        return {key: stats for key, (_, stats) in (await self._read_device()).items()}

    async def set_addresses(self, addresses: Iterable[IPInterface]) -> None:
        """Replace the interface's addresses."""
        interface = self._check_running()
        wanted = canonical_interfaces(addresses)
        self.require(*required_capabilities(addresses=wanted))
        await self._links.set_addresses(interface, wanted)

    async def set_routes(self, routes: Iterable[IPNetwork]) -> None:
        """Replace the routes this backend installed through the interface."""
        interface = self._check_running()
        wanted = canonical_networks(routes)
        self.require(*required_capabilities(routes=wanted))
        await self._links.set_routes(interface, wanted)
