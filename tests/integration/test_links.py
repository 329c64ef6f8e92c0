"""`adapters/tunnel/links.py` (ip(8)) on its own: the checks that keep a name from becoming an
option or an extra batch command, and the failures a caller sees. The full behaviour (links,
addresses, routes, IPv6, exit routes, teardown) is the tunnel contract's userspace half
(tests/contract/test_tunnel_backend.py), which reads every result back through ip(8)."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator

import pytest
from rustynet.adapters.tunnel.host_addresses import IpInterfaceAddresses
from rustynet.adapters.tunnel.links import ROUTE_PROTO, Links

from rustynet.ports.tunnel import TunnelError
from tests.netns import NetLab, require_root, unique_name

pytestmark = pytest.mark.asyncio

INJECTIONS = [
    "-n",  # would be taken as an option
    "rn0\nlink del lo",  # a second batch command
    "rn0 dev lo",  # a second word
    "rn0/../x",
    "",
    "a" * 16,  # longer than IFNAMSIZ - 1
]


@pytest.mark.parametrize("name", INJECTIONS)
async def test_a_name_that_is_not_an_interface_name_never_reaches_ip(name: str) -> None:
    """Refused before ip(8) runs: the namespace named here does not even exist."""
    links = Links("rustynet-no-such-namespace")
    with pytest.raises(TunnelError, match="invalid interface name"):
        await links.index(name)
    with pytest.raises(TunnelError, match="invalid interface name"):
        await links.set_routes(name, [ipaddress.ip_network("100.64.0.0/10")])


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_root("ip")
    with NetLab() as lab:
        yield lab


@pytest.mark.root
async def test_a_missing_namespace_fails_and_is_not_created() -> None:
    """ip -n never creates a namespace (pyroute2 needed flags=0 for the same)."""
    name = unique_name("rnmiss")
    with pytest.raises(TunnelError, match="looking up rn0 failed"):
        await Links(name).index("rn0")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert name not in listed.stdout


@pytest.mark.root
async def test_missing_link_and_foreign_routes(lab: NetLab) -> None:
    """A missing link reads as absent (index None, delete a no-op) and fails a change with its
    name; routes of another protocol id through the link are neither reported nor removed."""
    ns = lab.namespace()
    links = Links(ns.name)
    assert await links.index("rnnone0") is None
    await links.delete("rnnone0")
    with pytest.raises(TunnelError, match="rnnone0"):
        await links.set_addresses("rnnone0", [ipaddress.ip_interface("100.64.0.1/32")])
    lab.veth(ns, "198.51.100.1/24", lab.namespace(), "198.51.100.2/24")
    dev = next(name for name in ns.links() if name.startswith("va"))
    ns.run("ip", "route", "add", "100.99.0.0/16", "dev", dev, "proto", "static")
    await links.set_routes(dev, [ipaddress.ip_network("100.98.0.0/16")])
    assert await links.routes(dev) == (ipaddress.ip_network("100.98.0.0/16"),)
    await links.set_routes(dev, [])
    assert await links.routes(dev) == ()
    shown = ns.run("ip", "route", "show", "dev", dev).stdout
    assert "100.99.0.0/16" in shown
    assert f"proto {ROUTE_PROTO}" not in shown


@pytest.mark.root
async def test_interface_addresses_are_read_per_link_without_pyroute2(lab: NetLab) -> None:
    """The node's interface-address adapter lists every link of the namespace with its IPv4
    and IPv6 addresses (loopback and link-local included: the use case filters them)."""
    ns = lab.namespace()
    lab.veth(ns, "198.51.100.1/24", lab.namespace(), "198.51.100.2/24")
    dev = next(name for name in ns.links() if name.startswith("va"))
    ns.run("ip", "addr", "add", "2001:db8::1/64", "dev", dev, "nodad")
    found = await IpInterfaceAddresses(ns.name).addresses()
    assert ipaddress.ip_address("198.51.100.1") in found[dev]
    assert ipaddress.ip_address("2001:db8::1") in found[dev]
    assert ipaddress.ip_address("127.0.0.1") in found.get("lo", ())
