"""Run inside a NAT-lab namespace by `tests/integration/test_tunnel_port_probe.py`.

`serve PORT PORT`: the project's STUN service on both ports of every address; prints
`{"ready": true}` then serves until killed.
`probe TUNNEL_PORT ROUNDS PEER SERVER...`: binds a stand-in for wireguard-go's socket on
TUNNEL_PORT that sends a datagram every 20 ms to PEER (a `natlab_udp.py reflect`, which answers
with the source it saw) while the servers are probed ROUNDS times as if from TUNNEL_PORT with
`TunnelPortProbe`; prints one JSON line: per round the mapped endpoints, seconds and NAT class;
the tunnel's datagrams sent and answered and every source PEER saw (one: no rewrite); and the
conntrack entries and nft tables left afterwards.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess
import sys

import structlog
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.stun.server import StunServer
from rustynet.adapters.stun.tunnel_port import TunnelPortProbe

from rustynet.domain.nat import classify
from rustynet.domain.tunnel import UnderlayEndpoint


async def serve(ports: list[int]) -> None:
    server = StunServer([("0.0.0.0", p) for p in ports])
    await server.start()
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.Event().wait()


def _local_addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "address"], capture_output=True, text=True, check=True)
    return [a["local"] for link in json.loads(out.stdout) for a in link["addr_info"]]


async def probe(tunnel_port: int, rounds: int, peer: str, servers: list[str]) -> None:
    tunnel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tunnel.bind(("0.0.0.0", tunnel_port))
    tunnel.setblocking(False)
    loop = asyncio.get_running_loop()
    peer_ep = UnderlayEndpoint.parse(peer)
    sent, answered, seen = 0, 0, set()

    async def traffic() -> None:
        nonlocal sent
        while True:
            await loop.sock_sendto(tunnel, b"tunnel", (str(peer_ep.address), peer_ep.port))
            sent += 1
            await asyncio.sleep(0.02)

    async def replies() -> None:
        nonlocal answered
        while True:
            data, _ = await loop.sock_recvfrom(tunnel, 2048)
            answered += 1
            seen.add(data.decode())

    tasks = [asyncio.create_task(traffic()), asyncio.create_task(replies())]
    await asyncio.sleep(0.2)
    targets = [UnderlayEndpoint.parse(s) for s in servers]
    prober = TunnelPortProbe(OsEntropy())
    own = [ipaddress.ip_address(a) for a in _local_addresses()]
    results = []
    for _ in range(rounds):
        started = loop.time()
        observations = await prober.observe(targets, tunnel_port)
        took = loop.time() - started
        report = classify(observations, tunnel_port, own)
        results.append(
            {
                "mapped": [None if o.mapped is None else str(o.mapped) for o in observations],
                "seconds": round(took, 3),
                "nat": report.nat.value,
            }
        )
    await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    left = subprocess.run(
        ["conntrack", "-L", "-p", "udp"], capture_output=True, text=True, check=False
    ).stdout
    tables = subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, check=False
    ).stdout
    print(
        json.dumps(
            {
                "rounds": results,
                "sent": sent,
                "answered": answered,
                "peer_saw": sorted(seen),
                "conntrack": left,
                "tables": tables,
            }
        ),
        flush=True,
    )


def main(argv: list[str]) -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if argv[0] == "serve":
        asyncio.run(serve([int(p) for p in argv[1:]]))
    else:
        asyncio.run(probe(int(argv[1]), int(argv[2]), argv[3], argv[4:]))


if __name__ == "__main__":
    main(sys.argv[1:])
