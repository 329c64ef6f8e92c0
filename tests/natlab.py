"""The NAT lab: an "internet", NAT routers of each kind and private sites, in network namespaces.

Built on `tests/netns.py` (which owns creating and removing namespaces and veths); this module
owns the topology and the NAT emulation in nftables. Address plan (docs/development.md,
"NAT lab"; docs/lab.md address rules)::

    internet   the lab's bridge namespace, bridge br0 on 203.0.113.0/24 (no route elsewhere)
                 internet hosts and routers' `wan` get 203.0.113.10, .11, ... in order
    site k     198.51.100.16k/28 (k = 0..11): router .16k+1 on bridge `lan` in the router's
                 namespace, hosts .16k+2, .16k+3, ... (route to 203.0.113.0/24 via the router)
    carrier    CGNAT middle layer 198.51.100.192/26: carrier router .193 (`lan`), the CGNAT
                 sites' routers take .194, .195, ... as their `wan`

NAT kinds (`NatKind`, rules in `nat_ruleset`): public (a host on the internet, no NAT),
easy (endpoint-independent mapping, address-and-port-dependent filtering), hard
(endpoint-dependent mapping, random ports), full cone (endpoint-independent mapping and
filtering), CGNAT (an easy site router behind an easy carrier router). Every router drops
unsolicited inbound on `wan` at the forward AND the input hook: without the input-hook drop, an
early packet from outside to the router's port creates a conntrack entry, and the later SNAT of
the inside host's first packet to that peer picks another port.

Use::

    with NatLab() as nat:
        server = nat.internet_host()
        alice = nat.host(NatKind.EASY)          # a new easy site with one host
        site = nat.site(NatKind.HARD)
        b1, b2 = site.host(), site.host()       # two hosts behind one NAT
        proc = nat.udp(server, "reflect", "3478")

Everything is removed at close (the namespaces take their veths and bridges with them); only
processes inside the lab's own namespaces are killed.
"""

from __future__ import annotations

import enum
import json
import select
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.netns import ClosedOnExit, Namespace, NetLab, unique_name

INTERNET: Final = "203.0.113.0/24"
FIRST_PUBLIC_HOST: Final = 10
SITE_PREFIX_LEN: Final = 28
MAX_SITES: Final = 12  # 198.51.100.0/28 .. 198.51.100.176/28; .192/26 is the carrier's
CARRIER_NET: Final = "198.51.100.192"
CARRIER_PREFIX_LEN: Final = 26
UDP_HELPER: Final = Path(__file__).with_name("natlab_udp.py")
TABLE: Final = "natlab"


class NatKind(enum.Enum):
    """What sits between a host and the internet."""

    PUBLIC = "public"
    EASY = "easy"
    HARD = "hard"
    FULL_CONE = "full-cone"
    CGNAT = "cgnat"


def _drop_unsolicited(hook: str, accept_udp: bool) -> str:
    """A filter chain at `hook` dropping what arrives on `wan` unless it belongs to a connection
    (full cone lets UDP through the forward hook: its prerouting map already chose the host)."""
    udp = '        iifname "wan" meta l4proto udp accept\n' if accept_udp else ""
    return (
        f"    chain {hook} {{\n"
        f"        type filter hook {hook} priority filter; policy accept;\n"
        '        iifname "wan" ct state established,related accept\n'
        f"{udp}"
        '        iifname "wan" drop\n'
        "    }\n"
    )


def nat_ruleset(kind: NatKind, wan_ip: str, *, input_drop: bool = True) -> str:
    """The nftables ruleset (one `ip natlab` table) of a router of `kind` whose WAN is `wan_ip`.

    `input_drop=False` leaves out the input-hook drop: only for the test showing why it is there.
    """
    if kind is NatKind.PUBLIC:
        raise ValueError("a public host has no router")
    filters = _drop_unsolicited("forward", accept_udp=kind is NatKind.FULL_CONE)
    if input_drop:
        filters += _drop_unsolicited("input", accept_udp=False)
    pre = "        type nat hook prerouting priority dstnat; policy accept;\n"
    post = "        type nat hook postrouting priority srcnat; policy accept;\n"
    sets = ""
    if kind is NatKind.HARD:
        post += '        oifname "wan" masquerade random\n'
    elif kind is NatKind.FULL_CONE:
        sets = (
            "    map fullcone {\n"
            "        type inet_service : ipv4_addr . inet_service; flags dynamic,timeout;\n"
            "        timeout 3m;\n"
            "    }\n"
        )
        pre += '        iifname "wan" dnat ip addr . port to udp dport map @fullcone\n'
        post += f'        oifname "wan" snat to {wan_ip}\n'
        # After the SNAT (priority srcnat + 1) the packet carries its public port: the map
        # learns public port -> the connection's original inside address and port, exact even
        # when the SNAT had to move a second host off a port already taken.
        sets += (
            "    chain fullcone_learn {\n"
            "        type filter hook postrouting priority srcnat + 1; policy accept;\n"
            '        oifname "wan" meta l4proto udp ct direction original update @fullcone '
            "{ udp sport : ct original ip saddr . ct original proto-src }\n"
            "    }\n"
        )
    else:  # EASY, and each layer of CGNAT
        post += f'        oifname "wan" snat to {wan_ip}\n'
    return (
        f"table ip {TABLE} {{\n{sets}{filters}"
        f"    chain prerouting {{\n{pre}    }}\n"
        f"    chain postrouting {{\n{post}    }}\n}}\n"
    )


@dataclass
class Host:
    """One host namespace: `address` is its own (private, or public for an internet host)."""

    ns: Namespace
    address: str
    site: Site | None = None


@dataclass
class Router:
    """A NAT router namespace: `wan` toward the internet (or the carrier), bridge `lan` inside."""

    ns: Namespace
    kind: NatKind
    wan_address: str
    lan_address: str
    input_drop: bool = True

    def ruleset(self) -> str:
        """The router's live nftables table, as `nft list` prints it."""
        return self.ns.run("nft", "list", "table", "ip", TABLE).stdout


@dataclass
class Site:
    """A private network behind one router; `host()` adds a host to it."""

    lab: NatLab
    kind: NatKind
    network: str  # first address of the /28
    router: Router
    hosts: list[Host] = field(default_factory=list)

    def host(self) -> Host:
        """A new host on the site's LAN, routed to the internet through the router."""
        base = int(self.network.rsplit(".", 1)[1])
        number = base + 2 + len(self.hosts)
        if number >= base + 15:
            raise ValueError(f"site {self.network}/28 is full")
        address = f"198.51.100.{number}"
        ns = self.lab.netlab.namespace("rnh")
        self.lab.link_to_lan(ns, f"{address}/{SITE_PREFIX_LEN}", self.router)
        ns.ip("route", "add", INTERNET, "via", self.router.lan_address)
        host = Host(ns, address, self)
        self.hosts.append(host)
        return host


class NatLab(ClosedOnExit):
    """Owns one NAT topology; `close()` (or leaving the `with`) removes all of it."""

    def __init__(self) -> None:
        self.netlab = NetLab()
        self.internet = self.netlab.bridge()
        self._next_public = FIRST_PUBLIC_HOST
        self._sites = 0
        self._carrier: Router | None = None
        self._carrier_hosts = 0
        self._procs: list[subprocess.Popen[str]] = []

    @property
    def procs(self) -> tuple[subprocess.Popen[str], ...]:
        """The `udp()` helpers started so far."""
        return tuple(self._procs)

    def close(self) -> None:
        """Stop the helpers we started, then remove every namespace. Never raises."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        self._procs.clear()
        self.netlab.close()

    def _public_address(self) -> str:
        if self._next_public > 254:
            raise ValueError("the lab's internet is full")
        address = f"203.0.113.{self._next_public}"
        self._next_public += 1
        return address

    def internet_host(self) -> Host:
        """A host with a public address on the internet bridge (no NAT, no filtering)."""
        address = self._public_address()
        ns = self.netlab.namespace("rni")
        self.netlab.attach(ns, f"{address}/24")
        return Host(ns, address)

    def host(self, kind: NatKind) -> Host:
        """A host behind a new router of `kind` (an internet host for `PUBLIC`)."""
        if kind is NatKind.PUBLIC:
            return self.internet_host()
        return self.site(kind).host()

    def site(self, kind: NatKind, *, input_drop: bool = True) -> Site:
        """A new private /28 behind a new router of `kind` (CGNAT: behind the carrier too)."""
        if kind is NatKind.PUBLIC:
            raise ValueError("a public host has no site: use internet_host()")
        if self._sites >= MAX_SITES:
            raise ValueError("the lab has no /28 left")
        network = f"198.51.100.{16 * self._sites}"
        lan_address = f"198.51.100.{16 * self._sites + 1}"
        self._sites += 1
        if kind is NatKind.CGNAT:
            carrier = self.carrier()
            self._carrier_hosts += 1
            wan = f"198.51.100.{int(CARRIER_NET.rsplit('.', 1)[1]) + 1 + self._carrier_hosts}"
            router = self._router(kind, wan, lan_address, input_drop, SITE_PREFIX_LEN)
            self.link_to_lan(router.ns, f"{wan}/{CARRIER_PREFIX_LEN}", carrier, "wan")
            router.ns.ip("route", "add", INTERNET, "via", carrier.lan_address)
        else:
            wan = self._public_address()
            router = self._router(kind, wan, lan_address, input_drop, SITE_PREFIX_LEN)
            self.netlab.attach(router.ns, f"{wan}/24", name="wan")
        router.ns.run(
            "nft",
            "-f",
            "-",
            stdin=nat_ruleset(
                NatKind.EASY if kind is NatKind.CGNAT else kind, wan, input_drop=input_drop
            ),
        )
        return Site(self, kind, network, router)

    def carrier(self) -> Router:
        """The lab's one carrier-grade NAT (created on first use): easy NAT onto the internet."""
        if self._carrier is None:
            wan = self._public_address()
            lan = f"198.51.100.{int(CARRIER_NET.rsplit('.', 1)[1]) + 1}"
            carrier = self._router(NatKind.EASY, wan, lan, True, CARRIER_PREFIX_LEN)
            self.netlab.attach(carrier.ns, f"{wan}/24", name="wan")
            carrier.ns.run("nft", "-f", "-", stdin=nat_ruleset(NatKind.EASY, wan))
            self._carrier = carrier
        return self._carrier

    def _router(
        self, kind: NatKind, wan: str, lan_address: str, input_drop: bool, lan_len: int
    ) -> Router:
        """A router namespace with its `lan` bridge and forwarding on (the caller adds `wan`)."""
        ns = self.netlab.namespace("rnr")
        ns.ip("link", "add", "lan", "type", "bridge")
        ns.ip("addr", "add", f"{lan_address}/{lan_len}", "dev", "lan")
        ns.ip("link", "set", "lan", "up")
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        return Router(ns, kind, wan, lan_address, input_drop)

    def link_to_lan(self, ns: Namespace, address: str, router: Router, name: str = "eth0") -> None:
        """Plug `ns` (as interface `name`, carrying `address`) into `router`'s LAN bridge."""
        _, outer = self.netlab.veth(ns, address, router.ns, None, names=(name, unique_name("vl")))
        router.ns.ip("link", "set", outer, "master", "lan")

    def udp(self, host: Host, *argv: str) -> subprocess.Popen[str]:
        """Start `tests/natlab_udp.py ARGV` inside `host` (stdout: JSON lines; killed at close)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns.name, sys.executable, str(UDP_HELPER), *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        return proc


def read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> dict[str, object]:
    """The next JSON line a `udp()` helper printed (AssertionError with its stderr if none)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"natlab_udp printed nothing within {timeout} s: {err}")
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


def seen_from(nat: NatLab, host: Host, port: int, *reflectors: str) -> list[str | None]:
    """From one socket on `host`:`port`, the "ip:port" each reflector ("ip:port") saw."""
    proc = nat.udp(host, "probe", "--port", str(port), *_targets(reflectors))
    out, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        raise AssertionError(f"natlab_udp probe failed: {err}")
    return [_seen(json.loads(line)) for line in out.splitlines()]


def _targets(reflectors: tuple[str, ...]) -> list[str]:
    return [arg for r in reflectors for arg in ("--to", r)]


def _seen(line: dict[str, object]) -> str | None:
    seen = line["seen"]
    assert seen is None or isinstance(seen, str)
    return seen
