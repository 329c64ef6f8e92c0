"""The UDP relay lab shared by tests/e2e/test_relay_udp.py and bench/bench_relay_udp.py: the
relay's UDP side in a namespace (`RelayProcess` over tests/e2e/udp_relay_helper.py), plain
wireguard-go peers, and binds sent from a host's tunnel port (tests/e2e/udp_relay_bind.py).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rustynet.adapters.relay.udp_kernel import TABLE

from rustynet.domain.udp_relay import UdpGrant
from tests.e2e.harness import wait_for
from tests.natlab import Host, NatLab

ROOT: Final = Path(__file__).parents[2]
TUNNEL_PORT: Final = 41641
PORTS: Final = (40000, 40015)


class RelayProcess:
    """The helper in the relay namespace; one JSON line per command."""

    def __init__(self, host: Host, mode: str = "kernel") -> None:
        self.host = host
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns.name, sys.executable, "-m",
             "tests.e2e.udp_relay_helper", host.address, str(PORTS[0]), str(PORTS[1]), mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            assert self.read() == {"ready": True}
        except BaseException:
            self.close()
            raise

    def read(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the relay helper exited"
        answer: dict[str, object] = json.loads(line)
        return answer

    def call(self, **command: object) -> dict[str, object]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)

    def nft_set(self, name: str, kind: str = "set") -> str:
        return self.host.ns.run("nft", "list", kind, "ip", TABLE, name).stdout

    def keys(self, name: str) -> set[tuple[object, ...]]:
        """The keys of a set's elements (without their timers)."""
        out = self.host.ns.run("nft", "-j", "list", "set", "ip", TABLE, name).stdout
        listed = [i["set"] for i in json.loads(out)["nftables"] if "set" in i]
        return {tuple(e["elem"]["val"]["concat"]) for e in listed[0].get("elem", [])}

    def conntrack(self) -> str:
        out = self.host.ns.run("conntrack", "-L", "-p", "udp", check=False)
        return out.stdout


PROCS: list[subprocess.Popen[bytes]] = []


@dataclass
class Peer:
    host: Host
    interface: str
    overlay: str
    public_key: str


def wireguard(nat: NatLab, host: Host, overlay: str, workdir: Path) -> Peer:
    interface = nat.netlab.interface_name()
    key = host.ns.run("wg", "genkey").stdout.strip()
    (workdir / interface).write_text(key + "\n")
    PROCS.append(host.ns.popen("wireguard-go", "-f", interface))
    wait_for("wireguard-go is up", lambda: interface in host.ns.links(), 10)
    host.ns.run("wg", "set", interface, "private-key", str(workdir / interface),
                "listen-port", str(TUNNEL_PORT))  # fmt: skip
    host.ns.ip("addr", "add", f"{overlay}/32", "dev", interface)
    host.ns.ip("link", "set", interface, "up")
    public = host.ns.run("wg", "pubkey", stdin=key + "\n").stdout.strip()
    return Peer(host, interface, overlay, public)


def peer_with(me: Peer, other: Peer, endpoint: str) -> None:
    me.host.ns.run("wg", "set", me.interface, "peer", other.public_key, "endpoint", endpoint,
                   "allowed-ips", f"{other.overlay}/32", "persistent-keepalive", "1")  # fmt: skip
    me.host.ns.ip("route", "replace", f"{other.overlay}/32", "dev", me.interface)


def send(host: Host, source: str, relay: Host, port: int, packet: bytes) -> None:
    host.ns.run(sys.executable, "-m", "tests.e2e.udp_relay_bind", source, relay.address,
                str(port), packet.hex())  # fmt: skip


def bind(peer: Peer, relay: Host, answer: dict[str, object], counter: int) -> bytes:
    """Bind `peer`'s side from its tunnel port; the packet sent."""
    grant = UdpGrant.from_message(answer)
    packet = grant.bind_packet(counter)
    send(peer.host, str(TUNNEL_PORT), relay, grant.relay_port, packet)
    return packet


def ping(peer: Peer, other: Peer, *extra: str) -> bool:
    done = peer.host.ns.run("ping", "-c", "1", "-W", "1", *extra, other.overlay, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def reaped() -> Iterator[None]:
    """Wait for the wireguard-go processes the lab killed at its close."""
    try:
        yield
    finally:
        while PROCS:
            PROCS.pop().wait(10)
