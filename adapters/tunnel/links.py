"""Host networking of a tunnel interface through rtnetlink (pyroute2): link, addresses, routes.

The one rule: `set_routes` replaces only the routes we installed, recognised by our own route
protocol id (`ROUTE_PROTO`); kernel prefix routes and anyone else's routes are never touched.

pyroute2's synchronous `IPRoute` blocks, so every call runs in a worker thread with its own
short-lived socket (no shared socket across threads). `flags=0` matters: pyroute2's default
`O_CREAT` would silently create a missing namespace instead of failing.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from rustynet.domain.tunnel import (
    IPInterface,
    IPNetwork,
    canonical_interfaces,
    canonical_networks,
)
from rustynet.ports.tunnel import TunnelError

ROUTE_PROTO: Final = 147
"""rtnetlink protocol id on the routes we install (unassigned in /etc/iproute2/rt_protos)."""
_MAIN_TABLE: Final = 254
_SCOPE_LINK: Final = 253
_FAMILIES: Final = (2, 10)  # AF_INET, AF_INET6

_T = TypeVar("_T")


class Links:
    """rtnetlink operations on named links inside one network namespace (None: ours)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns

    async def _run(self, what: str, work: Callable[[IPRoute], _T]) -> _T:
        def call() -> _T:
            try:
                with IPRoute(netns=self.netns, flags=0, groups=0) as ipr:
                    return work(ipr)
            except NetlinkError as exc:
                raise TunnelError(f"{what} failed: netlink error {exc.code}") from exc
            except OSError as exc:
                raise TunnelError(f"{what} failed: {exc}") from exc

        return await asyncio.to_thread(call)

    async def index(self, name: str) -> int | None:
        """Interface index of `name`, or None when there is no such link."""
        return await self._run(f"looking up {name}", lambda ipr: _index(ipr, name))

    async def exists(self, name: str) -> bool:
        """True when a link called `name` exists."""
        return await self.index(name) is not None

    async def up(self, name: str) -> None:
        """Set the link administratively up."""
        await self._run(
            f"setting {name} up",
            lambda ipr: ipr.link("set", index=_require(ipr, name), state="up"),
        )

    async def delete(self, name: str) -> None:
        """Delete the link if it exists (its addresses and routes go with it)."""

        def work(ipr: IPRoute) -> None:
            index = _index(ipr, name)
            if index is not None:
                ipr.link("del", index=index)

        await self._run(f"deleting {name}", work)

    async def create(self, name: str, kind: str) -> None:
        """Create a link of `kind` (e.g. a kernel tunnel type); refuses an existing name."""
        await self._run(f"creating {name}", lambda ipr: ipr.link("add", ifname=name, kind=kind))

    async def addresses(self, name: str) -> tuple[IPInterface, ...]:
        """Addresses on the link (IPv6 link-local ones left out: the kernel owns those)."""
        return await self._run(f"reading addresses of {name}", lambda ipr: _addresses(ipr, name))

    async def set_addresses(self, name: str, addresses: Iterable[IPInterface]) -> None:
        """Make the link's addresses exactly `addresses` (adds first, then removes)."""
        wanted = set(canonical_interfaces(addresses))

        def work(ipr: IPRoute) -> None:
            index = _require(ipr, name)
            have = set(_addresses(ipr, name))
            for addr in sorted(wanted - have, key=str):
                ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
            for addr in sorted(have - wanted, key=str):
                ipr.addr("del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)

        await self._run(f"setting addresses of {name}", work)

    async def routes(self, name: str) -> tuple[IPNetwork, ...]:
        """Routes we installed through the link (our protocol id, main table)."""
        return await self._run(f"reading routes of {name}", lambda ipr: _routes(ipr, name))

    async def set_routes(self, name: str, routes: Iterable[IPNetwork]) -> None:
        """Make our routes through the link exactly `routes` (needs the link up)."""
        wanted = set(canonical_networks(routes))

        def work(ipr: IPRoute) -> None:
            index = _require(ipr, name)
            have = set(_routes(ipr, name))
            for net in sorted(wanted - have, key=str):
                ipr.route("add", dst=str(net), oif=index, proto=ROUTE_PROTO)
            for net in sorted(have - wanted, key=str):
                try:
                    ipr.route("del", dst=str(net), oif=index, proto=ROUTE_PROTO)
                except NetlinkError as exc:
                    if exc.code != errno.ESRCH:  # already gone: the goal holds
                        raise

        await self._run(f"setting routes of {name}", work)


def _index(ipr: IPRoute, name: str) -> int | None:
    found: list[int] = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _require(ipr: IPRoute, name: str) -> int:
    index = _index(ipr, name)
    if index is None:
        raise TunnelError(f"interface {name} does not exist")
    return index


def _addresses(ipr: IPRoute, name: str) -> tuple[IPInterface, ...]:
    index = _require(ipr, name)
    out: list[IPInterface] = []
    for msg in ipr.get_addr(index=index):
        if msg["family"] == 10 and msg["scope"] == _SCOPE_LINK:
            continue
        out.append(ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}"))
    return canonical_interfaces(out)


def _routes(ipr: IPRoute, name: str) -> tuple[IPNetwork, ...]:
    index = _require(ipr, name)
    out: list[IPNetwork] = []
    for family in _FAMILIES:
        msgs: Iterable[Any] = ipr.get_routes(family=family)
        for msg in msgs:
            if (
                msg.get("oif") == index
                and msg["proto"] == ROUTE_PROTO
                and msg.get("table") == _MAIN_TABLE
            ):
                unspecified = ipaddress.IPv4Address(0) if family == 2 else ipaddress.IPv6Address(0)
                dst = msg.get("dst") or str(unspecified)
                out.append(ipaddress.ip_network(f"{dst}/{msg['dst_len']}"))
    return canonical_networks(out)
