"""Standalone `rustynet netcheck` inside the NAT lab classifies each kind (tests/natlab.py).

One lab for the module: an internet host runs the STUN service (adapters/stun/server.py) on
two ports of 203.0.113.x and of an IPv6 address; each test puts a host behind one kind of NAT
(public, easy, full cone, hard, CGNAT, a router that drops UDP) and runs the real command
line in the host's namespace. The classification, the reflexive address (the outermost
router's WAN address) and the IPv6 line must match the kind, within a few seconds.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.natlab import Host, NatKind, NatLab
from tests.netns import require_root

pytestmark = [pytest.mark.root]

STUN_PORTS = (3478, 3479)
STUN6 = "2001:db8:14::1"
PUBLIC6 = "2001:db8:14::10"
RUSTYNET = str(Path(sys.executable).with_name("rustynet"))
SERVE = """
import asyncio, sys
from rustynet.adapters.stun.server import StunServer
async def main():
    server = StunServer([(a, int(p)) for a, p in (x.rsplit(":", 1) for x in sys.argv[1:])])
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@dataclass
class Lab:
    """The lab, its STUN host and the `--stun` options every run passes."""

    nat: NatLab
    stun: Host
    options: list[str]


def _interface(host: Host) -> str:
    for link in json.loads(host.ns.ip("-j", "address", "show")):
        if any(a.get("local") == host.address for a in link.get("addr_info", [])):
            return str(link["ifname"])
    raise AssertionError(f"no interface carries {host.address}")


def _add_ipv6(host: Host, address: str) -> None:
    host.ns.ip("address", "add", f"{address}/64", "dev", _interface(host), "nodad")


def _wait_ready(server: subprocess.Popen[bytes]) -> None:
    """Read the server's stdout (its log lines go there too) until a line says `ready`."""
    assert server.stdout is not None
    fd, seen = server.stdout.fileno(), b""
    deadline = time.monotonic() + 15
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 4096) if ready else b""
        seen += chunk
        if b"\nready\n" in b"\n" + seen:
            return
        if not chunk:
            break
    raise AssertionError(f"the lab's STUN service did not start: {seen!r}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_root("ip", "nft", "sysctl")
    with NatLab() as nat:
        stun = nat.internet_host()
        _add_ipv6(stun, STUN6)
        binds = [f"{stun.address}:{p}" for p in STUN_PORTS] + [f"[{STUN6}]:{STUN_PORTS[0]}"]
        argv = [a.replace("[", "").replace("]", "") for a in binds]
        server = subprocess.Popen(
            ["ip", "netns", "exec", stun.ns.name, sys.executable, "-c", SERVE, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_ready(server)
            yield Lab(nat, stun, [arg for b in binds for arg in ("--stun", b)])
        finally:
            server.kill()
            server.communicate()


def _netcheck(lab: Lab, host: Host) -> tuple[dict[str, object], str, float]:
    start = time.monotonic()
    argv = [RUSTYNET, "netcheck", *lab.options, "--control", f"https://{lab.stun.address}:443"]
    as_json = host.ns.run(*argv, "--json", timeout=20)
    elapsed = time.monotonic() - start
    text = host.ns.run(*argv, timeout=20).stdout
    doc = json.loads(as_json.stdout)
    assert isinstance(doc, dict)
    return doc, text, elapsed


def _block_udp(lab: Lab, host: Host) -> None:
    """The host's router forwards no UDP (a firewall that allows only TCP out)."""
    assert host.site is not None
    host.site.router.ns.run(
        "nft",
        "-f",
        "-",
        stdin="table ip nocheck_udp {\n chain forward {\n"
        "  type filter hook forward priority filter - 1; policy accept;\n"
        "  meta l4proto udp drop\n }\n}\n",
    )


@pytest.mark.parametrize(
    ("kind", "nat_class"),
    [
        (NatKind.PUBLIC, "public"),
        (NatKind.EASY, "eim-port-preserving"),
        (NatKind.FULL_CONE, "eim-port-preserving"),
        (NatKind.HARD, "hard"),
        (NatKind.CGNAT, "eim-port-preserving"),
        ("udp-blocked", "udp-blocked"),
    ],
    ids=lambda v: v.value if isinstance(v, NatKind) else str(v),
)
def test_standalone_netcheck_classifies_each_kind(
    lab: Lab, kind: NatKind | str, nat_class: str
) -> None:
    nat = lab.nat
    host = nat.host(NatKind.EASY if kind == "udp-blocked" else kind)  # type: ignore[arg-type]
    if kind == "udp-blocked":
        _block_udp(lab, host)
    if kind is NatKind.PUBLIC:
        _add_ipv6(host, PUBLIC6)
    doc, text, elapsed = _netcheck(lab, host)
    port = doc["local_port"]
    v4 = doc["ipv4"]
    assert isinstance(v4, dict)
    assert doc["measured"] == "ephemeral-port"
    assert v4["nat"] == nat_class, doc
    if kind is NatKind.PUBLIC:
        wan = host.address
    elif kind is NatKind.CGNAT:
        wan = nat.carrier().wan_address
    else:
        assert host.site is not None
        wan = host.site.router.wan_address
    if kind == "udp-blocked":
        assert (doc["udp"], v4["reflexive"], v4["answered"]) == (False, [], 0)
    elif kind is NatKind.HARD:
        reflexive = v4["reflexive"]
        assert isinstance(reflexive, list)
        assert len(reflexive) == 2
        assert {r.rsplit(":", 1)[0] for r in reflexive} == {wan}
    else:
        assert v4["reflexive"] == [f"{wan}:{port}"]
        assert v4["port_preserved"] is True
    v6 = doc["ipv6"]
    assert isinstance(v6, dict)
    if kind is NatKind.PUBLIC:
        assert (v6["reachable"], v6["reflexive"]) == (True, [f"[{PUBLIC6}]:{port}"])
    else:
        assert v6["reachable"] is False  # the private sites have no IPv6
    assert "measured:       an ephemeral port" in text
    assert f"mapping:        {nat_class}:" in text
    assert elapsed < 5, f"netcheck took {elapsed:.1f} s"
