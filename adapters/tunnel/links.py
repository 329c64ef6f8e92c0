"""Host networking of a tunnel interface through iproute2's ip(8): link, addresses, routes.

The one rule: `set_routes` replaces only the routes we installed, recognised by our own route
protocol id (`ROUTE_PROTO`); kernel prefix routes and anyone else's routes are never touched.

Why ip(8) rather than rtnetlink from Python: these calls run at start and when the routes
change, nowhere near a hot path, and importing pyroute2 for them cost every node on the userspace
backend ~10 MB of RSS for its whole life and ~0.1 s of start-up (bench/bench_node.py). ip(8)
is iproute2, already required like nft(8); it reads state as `-json` (parsed here) and applies
the adds of one change as one `-batch`, which stops at the first failure. Arguments go as argv
(no shell); interface names are checked first, so a name can neither become an option nor add
a line to a batch. A missing namespace fails (ip never creates one). The kernel backend still
speaks generic netlink to WireGuard itself (pyroute2).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from typing import Any, Final

from rustynet.domain.tunnel import (
    IPAddress,
    IPInterface,
    IPNetwork,
    canonical_interfaces,
    canonical_networks,
)
from rustynet.ports.tunnel import TunnelError

ROUTE_PROTO: Final = 147
"""rtnetlink protocol id on the routes we install (unassigned in /etc/iproute2/rt_protos)."""
IP_TIMEOUT_S: Final = 10.0
_NAME: Final = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}")  # IFNAMSIZ - 1, no option
_NO_DEVICE: Final = ("does not exist", "Cannot find device")
_NO_ROUTE: Final = ("No such process",)  # ESRCH: deleting a route that is already gone


class Links:
    """ip(8) operations on named links inside one network namespace (None: ours)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._ip_path: str | None = None

    async def _ip(
        self,
        what: str,
        args: Sequence[str],
        batch: str | None = None,
        *,
        gone: Sequence[str] = (),
    ) -> str | None:
        """Run ip(8) with `args` (or `-batch -` fed `batch`): its stdout; None when it failed
        with one of the `gone` messages (the thing is already absent); TunnelError else."""
        if self._ip_path is None:
            self._ip_path = shutil.which("ip")
            if self._ip_path is None:
                raise TunnelError(f"{what} failed: ip(8) not found (install iproute2)")
        argv = [self._ip_path, *(("-n", self.netns) if self.netns else ()), *args]
        if batch is not None:
            argv += ["-batch", "-"]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if batch is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TunnelError(f"{what} failed: {exc}") from exc
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(None if batch is None else batch.encode()), IP_TIMEOUT_S
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TunnelError(f"{what} failed: ip(8) took over {IP_TIMEOUT_S:g} s") from None
        if proc.returncode == 0:
            return out.decode(errors="replace")
        message = err.decode(errors="replace").strip()
        if any(marker in message for marker in gone):
            return None
        raise TunnelError(f"{what} failed: {message or f'ip exited {proc.returncode}'}")

    async def _show(self, what: str, args: Sequence[str]) -> list[Any] | None:
        """`ip -json ARGS` about one link: the parsed list, None when there is no such link."""
        out = await self._ip(what, ["-json", *args], gone=_NO_DEVICE)
        if out is None:
            return None
        try:
            parsed = json.loads(out) if out.strip() else []
        except ValueError as exc:
            raise TunnelError(f"{what} failed: unreadable ip -json output ({exc})") from exc
        if not isinstance(parsed, list):
            raise TunnelError(f"{what} failed: unexpected ip -json output")
        return parsed

    async def index(self, name: str) -> int | None:
        """Interface index of `name`, or None when there is no such link."""
        found = await self._show(f"looking up {name}", ["link", "show", "dev", _checked(name)])
        if not found:
            return None
        return int(found[0]["ifindex"])

    async def exists(self, name: str) -> bool:
        """True when a link called `name` exists."""
        return await self.index(name) is not None

    async def up(self, name: str) -> None:
        """Set the link administratively up."""
        await self._ip(f"setting {name} up", ["link", "set", "dev", _checked(name), "up"])

    async def delete(self, name: str) -> None:
        """Delete the link if it exists (its addresses and routes go with it)."""
        await self._ip(f"deleting {name}", ["link", "del", "dev", _checked(name)], gone=_NO_DEVICE)

    async def create(self, name: str, kind: str) -> None:
        """Create a link of `kind` (e.g. a kernel tunnel type); refuses an existing name."""
        await self._ip(f"creating {name}", ["link", "add", _checked(name), "type", _checked(kind)])

    async def addresses(self, name: str) -> tuple[IPInterface, ...]:
        """Addresses on the link (IPv6 link-local ones left out: the kernel owns those)."""
        what = f"reading addresses of {name}"
        links = await self._show(what, ["address", "show", "dev", _checked(name)])
        if not links:
            raise TunnelError(f"interface {name} does not exist")
        out: list[IPInterface] = []
        for info in links[0].get("addr_info", ()):
            if info.get("family") == "inet6" and info.get("scope") == "link":
                continue
            if info.get("family") in ("inet", "inet6"):
                out.append(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}"))
        return canonical_interfaces(out)

    async def all_addresses(self) -> dict[str, tuple[IPAddress, ...]]:
        """Every link's addresses (any family and scope): link name → addresses."""
        links = await self._show("reading interface addresses", ["address", "show"]) or []
        out: dict[str, tuple[IPAddress, ...]] = {}
        for link in links:
            found = []
            for info in link.get("addr_info", ()):
                if info.get("family") in ("inet", "inet6") and isinstance(info.get("local"), str):
                    try:
                        found.append(ipaddress.ip_address(info["local"]))
                    except ValueError:
                        continue
            out[str(link.get("ifname", ""))] = tuple(found)
        return out

    async def set_addresses(self, name: str, addresses: Iterable[IPInterface]) -> None:
        """Make the link's addresses exactly `addresses` (adds first, then removes)."""
        wanted = set(canonical_interfaces(addresses))
        have = set(await self.addresses(name))
        lines = [f"address add {a} dev {name}" for a in sorted(wanted - have, key=str)]
        lines += [f"address del {a} dev {name}" for a in sorted(have - wanted, key=str)]
        if lines:
            await self._ip(f"setting addresses of {name}", [], "\n".join(lines) + "\n")

    async def routes(self, name: str) -> tuple[IPNetwork, ...]:
        """Routes we installed through the link (our protocol id, main table)."""
        what = f"reading routes of {name}"
        out: list[IPNetwork] = []
        ours = ["route", "show", "dev", _checked(name), "proto", str(ROUTE_PROTO), "table", "main"]
        for family, default in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
            shown = await self._show(what, [family, *ours])
            if shown is None:
                raise TunnelError(f"interface {name} does not exist")
            for route in shown:
                dst = str(route["dst"])
                out.append(ipaddress.ip_network(default if dst == "default" else dst))
        return canonical_networks(out)

    async def set_routes(self, name: str, routes: Iterable[IPNetwork]) -> None:
        """Make our routes through the link exactly `routes` (needs the link up)."""
        wanted = set(canonical_networks(routes))
        have = set(await self.routes(name))
        what = f"setting routes of {name}"
        adds = [
            f"route add {net} dev {name} proto {ROUTE_PROTO}"
            for net in sorted(wanted - have, key=str)
        ]
        if adds:
            await self._ip(what, [], "\n".join(adds) + "\n")
        for net in sorted(have - wanted, key=str):
            await self._ip(  # already gone: the goal holds
                what,
                ["route", "del", str(net), "dev", name, "proto", str(ROUTE_PROTO)],
                gone=_NO_ROUTE,
            )


def _checked(name: str) -> str:
    """An interface name (or link kind) safe as one argv word and one batch-line word."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise TunnelError(f"invalid interface name {name!r}")
    return name
