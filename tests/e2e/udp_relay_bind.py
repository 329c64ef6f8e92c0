"""Send one UDP relay bind packet as if from the tunnel port (the node's side of a bind, for
tests with plain wireguard-go), or a raw datagram from this socket's own port (forgeries).

Usage (as root, inside a host namespace):
`python -m tests.e2e.udp_relay_bind TUNNEL_PORT|- RELAY_ADDRESS RELAY_PORT PACKET_HEX`.
"""

from __future__ import annotations

import asyncio
import sys

from rustynet.adapters.stun.tunnel_port import sending_as_tunnel_port

from rustynet.domain.tunnel import UnderlayEndpoint


async def main(tunnel_port: str, address: str, port: int, packet: bytes) -> None:
    """Send `packet` to ADDRESS:PORT (from TUNNEL_PORT unless it is `-`)."""
    destination = UnderlayEndpoint.parse(f"{address}:{port}")
    source = None if tunnel_port == "-" else int(tunnel_port)
    async with sending_as_tunnel_port(source, [destination]) as sock:
        sock.sendto(packet, (address, port))
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])))
