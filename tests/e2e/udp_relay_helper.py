"""The relay's UDP side alone, in a lab namespace: allocations, bind sockets and kernel
forwarding (`UdpRelay` over `KernelForwarding`), driven by JSON lines on stdin (no WebSocket,
no TLS: the asks stand for authenticated sessions' `udp_allocate` messages).

Usage (as root, inside the relay's namespace):
`python -m tests.e2e.udp_relay_helper ADDRESS PORT_FIRST PORT_LAST [kernel|userspace]`, then
one JSON object per line: `{"op": "ask", "node", "peer", "ttl"}` (answer: the
`udp_allocation` message), `{"op": "gone", "node"}`, `{"op": "counters"}`, `{"op": "stop"}`.
Every answer is one line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta

import attrs
import structlog
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.relay.udp_kernel import KernelForwarding
from rustynet.adapters.relay.udp_sessions import UdpRelay
from rustynet.adapters.relay.udp_userspace import UserspaceForwarding

from rustynet.domain.udp_relay import AllocationTable, UdpRelayLimits


async def main(address: str, first: int, last: int, mode: str) -> None:
    """Serve commands from stdin until `stop` or end of input (then the table stays)."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    limits = UdpRelayLimits(port_first=first, port_last=last, per_node=4, total=8)
    clock = SystemClock()
    table = AllocationTable(limits, OsEntropy())
    userspace = UserspaceForwarding(address)
    forwarding = KernelForwarding(address, limits)
    if mode == "userspace":
        relay = UdpRelay(address, table, userspace, clock, ports=userspace)
    else:
        await forwarding.start()
        relay = UdpRelay(address, table, forwarding, clock)
    await relay.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        command = json.loads(line)
        op = command.pop("op")
        answer: dict[str, object] = {"ok": True}
        if op == "ask":
            expires = clock.now() + timedelta(seconds=float(command.pop("ttl")))
            answer = await relay.ask(
                command.pop("node"), {"type": "udp_allocate", **command}, expires
            )
        elif op == "gone":
            relay.node_gone(command["node"])
        elif op == "stop":
            await relay.settled()
            if mode != "userspace":
                await forwarding.stop(list(relay.table))
            await relay.close()
            print(json.dumps(answer), flush=True)
            return
        await relay.settled()
        if op == "counters":
            answer = {"udp": attrs.asdict(relay.counters)}
            if mode == "userspace":
                answer["forwarded"] = [list(userspace.forwarded(a)) for a in relay.table]
            else:
                flows = [await forwarding.counters(a) for a in relay.table]
                answer["flows"] = [[attrs.asdict(c) for c in pair] for pair in flows]
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    mode = sys.argv[4] if len(sys.argv) > 4 else "kernel"
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), mode))
