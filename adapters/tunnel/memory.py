"""In-memory tunnel backend: the `TunnelBackend` contract with no kernel, for tests and dry runs.

The one rule: it behaves like a real backend at the port (same refusals, same idempotence,
same diff semantics); it carries no traffic, so its stats are honest zeros and no handshake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rustynet.domain.keys import TunnelKey
from rustynet.domain.tunnel import (
    Capability,
    InterfaceConfig,
    IPInterface,
    IPNetwork,
    PeerConfig,
    PeerDiff,
    PeerStats,
    canonical_interfaces,
    canonical_networks,
    required_capabilities,
)
from rustynet.ports.tunnel import TunnelError, check_capabilities

DEFAULT_CAPABILITIES = frozenset({Capability.ROAMING, Capability.IPV6, Capability.EXIT_ROUTING})


class MemoryTunnelBackend:
    """A tunnel interface held in a dict. `change_operations` counts applied non-empty changes."""

    def __init__(self, capabilities: Iterable[Capability] = DEFAULT_CAPABILITIES) -> None:
        self._capabilities = frozenset(capabilities)
        self._interface: str | None = None
        self._public_key: TunnelKey | None = None
        self._underlay_port: int | None = None
        self._peers: dict[TunnelKey, PeerConfig] = {}
        self._addresses: tuple[IPInterface, ...] = ()
        self._routes: tuple[IPNetwork, ...] = ()
        self.change_operations = 0

    @property
    def name(self) -> str:
        """Backend name for `status`."""
        return "memory"

    @property
    def interface(self) -> str | None:
        """Name of the started interface, None when stopped."""
        return self._interface

    @property
    def installed_routes(self) -> tuple[IPNetwork, ...]:
        """Routes currently installed (empty when stopped)."""
        return self._routes

    def capabilities(self) -> frozenset[Capability]:
        """Capabilities given at construction."""
        return self._capabilities

    def require(self, *capabilities: Capability) -> None:
        """Raise `UnsupportedCapability` for any missing capability."""
        check_capabilities(self.name, self._capabilities, capabilities)

    async def check_available(self) -> None:
        """Always available."""

    async def start(self, config: InterfaceConfig) -> None:
        """Create (or re-apply) the interface."""
        self.require(*required_capabilities(addresses=config.addresses, routes=config.routes))
        if self._interface is not None and self._interface != config.name:
            raise TunnelError(f"backend already runs interface {self._interface}")
        self._interface = config.name
        self._public_key = config.public_key
        self._underlay_port = config.underlay_port
        self._addresses = config.addresses
        self._routes = config.routes

    def _check_started(self) -> None:
        if self._interface is None:
            raise TunnelError("tunnel interface is not started")

    async def apply(self, diff: PeerDiff) -> None:
        """Apply the diff's peers; an empty diff changes nothing."""
        self._check_started()
        self.require(*required_capabilities(diff=diff))
        if diff.empty:
            return
        for peer in (*diff.add, *diff.update):
            self._peers[peer.key] = peer
        for key in diff.remove:
            self._peers.pop(key, None)
        self.change_operations += 1

    async def peers(self) -> Mapping[TunnelKey, PeerConfig]:
        """The held peers."""
        self._check_started()
        return dict(self._peers)

    async def set_addresses(self, addresses: Iterable[IPInterface]) -> None:
        """Replace the addresses."""
        self._check_started()
        wanted = canonical_interfaces(addresses)
        self.require(*required_capabilities(addresses=wanted))
        self._addresses = wanted

    async def addresses(self) -> tuple[IPInterface, ...]:
        """Current addresses (a test/diagnostic read, not part of the port)."""
        return self._addresses

    async def set_routes(self, routes: Iterable[IPNetwork]) -> None:
        """Replace the routes."""
        self._check_started()
        wanted = canonical_networks(routes)
        self.require(*required_capabilities(routes=wanted))
        self._routes = wanted

    async def stats(self) -> Mapping[TunnelKey, PeerStats]:
        """Zero counters and no handshake: nothing flows through memory."""
        self._check_started()
        return {k: PeerStats(k, None, 0, 0, p.underlay_endpoint) for k, p in self._peers.items()}

    async def stop(self) -> None:
        """Forget the interface, peers, addresses and routes."""
        self._interface = None
        self._public_key = None
        self._peers.clear()
        self._addresses = ()
        self._routes = ()
