"""The node's interface addresses for candidate gathering (`ports.interfaces.InterfaceAddresses`),
read with ip(8) `-json address show`, not pyroute2 (see `links.py` for why)."""

from __future__ import annotations

from collections.abc import Mapping

from rustynet.adapters.tunnel.links import Links

from rustynet.domain.tunnel import IPAddress


class IpInterfaceAddresses:
    """Every interface's addresses in one network namespace (None: ours)."""

    def __init__(self, netns: str | None = None) -> None:
        self._links = Links(netns)

    async def addresses(self) -> Mapping[str, tuple[IPAddress, ...]]:
        """Interface name → its addresses (all families and scopes; the use case filters)."""
        return await self._links.all_addresses()


__all__ = ["IpInterfaceAddresses"]
