"""Batched kernel forwarding of UDP relay sessions (`UdpRelay` over `KernelForwarding`) in a
namespace this test creates: the relay's table with hundreds of allocations, a renewal of
every session at once, a new pair binding right behind it, and a teardown of everything. The
relay's `nft` and `conntrack` calls run inside the namespace and are counted: each drain of
the queue is one transaction, renewals refresh timeouts without any conntrack work, the new
pair's install does not wait behind the refreshes, and conntrack deletions happen only for
ports that have an entry. No sockets: bind packets are handed to the relay as its bind
sockets would (the e2e suite, tests/e2e/test_relay_udp.py, has real traffic)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
import rustynet.adapters.relay.udp_kernel as udp_kernel
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.relay.udp_kernel import TABLE, KernelForwarding, ruleset
from rustynet.adapters.relay.udp_sessions import REFRESH_BATCH, Deliver, UdpRelay
from rustynet.adapters.support.system_tools import run_tool

from rustynet.domain.udp_relay import (
    Allocation,
    AllocationTable,
    ForwardingBatch,
    UdpGrant,
    UdpRelayLimits,
)
from tests.netns import Namespace, NetLab, require_in_ci, require_root

pytestmark = [pytest.mark.root]

ADDRESS = "203.0.113.10"
PAIRS = REFRESH_BATCH + 44  # the renewals need two drains
HUB = "node-hub"  # one side of every pair, so one renewal refreshes every allocation
LIMITS = UdpRelayLimits(
    port_first=40000, port_last=40000 + 2 * PAIRS + 1, per_node=PAIRS + 1, total=PAIRS + 1
)


class NoSockets:
    """`Ports` double: the test hands bind packets to `UdpRelay.datagram` itself."""

    async def open(self, allocation: Allocation, deliver: Deliver) -> None:
        pass

    def close(self, allocation: Allocation) -> None:
        pass


class Recorded(KernelForwarding):
    """The real forwarder, its batches recorded."""

    def __init__(self, address: str, limits: UdpRelayLimits) -> None:
        super().__init__(address, limits)
        self.batches: list[ForwardingBatch] = []

    async def apply(self, batch: ForwardingBatch, now: datetime) -> None:
        self.batches.append(batch)
        await super().apply(batch, now)


@pytest.fixture
def ns(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Namespace, list[list[str]]]]:
    """The relay's namespace (its table installed); every tool call of the forwarder runs
    there and is recorded."""
    require_in_ci("conntrack")
    require_root("ip", "nft", "conntrack")
    calls: list[list[str]] = []
    with NetLab() as lab:
        relay_ns = lab.namespace("rnkb")

        async def inside(argv: Sequence[str], stdin: bytes | None = None) -> bytes:
            calls.append(list(argv))
            return await run_tool(argv, stdin, netns=relay_ns.name)

        monkeypatch.setattr(udp_kernel, "run_tool", inside)
        relay_ns.run("nft", "-f", "-", stdin=ruleset(ADDRESS, LIMITS))
        yield relay_ns, calls


def _elements(relay_ns: Namespace, name: str) -> list[dict[str, object]]:
    out = relay_ns.run("nft", "-j", "list", "set", "ip", TABLE, name).stdout
    listed = [i["set"] for i in json.loads(out)["nftables"] if "set" in i]
    return [e["elem"] for e in listed[0].get("elem", [])]


def _counted(calls: list[list[str]]) -> dict[str, int]:
    return {
        "nft": sum(1 for c in calls if c[0] == "nft"),
        "listings": sum(1 for c in calls if c[:2] == ["conntrack", "-L"]),
        "deletions": sum(1 for c in calls if c[:2] == ["conntrack", "-D"]),
    }


async def _pair(relay: UdpRelay, peer: str, ttl: float, source_port: int) -> list[int]:
    """`HUB` and `peer` ask and bind (from distinct sources); the pair's relay ports."""
    expires = datetime.now(UTC) + timedelta(seconds=ttl)
    grants = [
        UdpGrant.from_message(await relay.ask(a, {"type": "udp_allocate", "peer": b}, expires))
        for a, b in ((HUB, peer), (peer, HUB))
    ]
    for number, grant in enumerate(grants):
        relay.datagram(
            grant.relay_port, grant.bind_packet(1), ("198.51.100.2", source_port + number)
        )
    return [grant.relay_port for grant in grants]


@pytest.mark.asyncio
async def test_renewals_refresh_timeouts_in_batches_and_a_new_pair_goes_first(
    ns: tuple[Namespace, list[list[str]]],
) -> None:
    relay_ns, calls = ns
    forwarding = Recorded(ADDRESS, LIMITS)
    table = AllocationTable(LIMITS, OsEntropy())
    relay = UdpRelay(ADDRESS, table, forwarding, SystemClock(), ports=NoSockets())
    await relay.start()
    try:
        # Set-up: every pair's binds queued before the worker runs: one transaction.
        for i in range(PAIRS - 1):
            await _pair(relay, f"node-{i}", 30, 10000 + 2 * i)
        await relay.settled()
        assert len(_elements(relay_ns, "bound")) == 2 * (PAIRS - 1)
        assert _counted(calls) == {"nft": 1, "listings": 1, "deletions": 0}
        before = max(int(str(e["expires"])) for e in _elements(relay_ns, "bound"))
        assert before <= 30

        # Every session renews (each pair twice: both sides), then a new pair binds.
        calls.clear()
        forwarding.batches.clear()
        later = datetime.now(UTC) + timedelta(seconds=300)
        for node in [HUB, *(f"node-{i}" for i in range(PAIRS - 1))]:
            relay.renew(node, later)
        started = time.monotonic()
        ports = await _pair(relay, "node-new", 300, 20000)
        await relay.settled()
        first, second = forwarding.batches
        assert [len(first.installs), len(first.refreshes)] == [1, REFRESH_BATCH]
        assert [len(second.installs), len(second.refreshes)] == [0, PAIRS - 1 - REFRESH_BATCH]
        assert {s.port for s in first.installs[0].sides} == set(ports)
        assert _counted(calls) == {"nft": 2, "listings": 1, "deletions": 0}
        print(f"\n{PAIRS - 1} allocations renewed + one new pair applied in "
              f"{time.monotonic() - started:.2f} s")  # fmt: skip
        expiries = [int(str(e["expires"])) for e in _elements(relay_ns, "bound")]
        assert len(expiries) == 2 * PAIRS
        assert min(expiries) > 200, "every element's timeout follows the renewed expiry"

        # Teardown: one transaction; a conntrack deletion only for the port with an entry.
        calls.clear()
        relay_ns.run("conntrack", "-I", "-p", "udp", "-s", "198.51.100.2", "-d", ADDRESS,
                     "--sport", "20000", "--dport", str(ports[0]), "-t", "100")  # fmt: skip
        relay.node_gone(HUB)
        await relay.settled()
        assert not _elements(relay_ns, "bound")
        assert _counted(calls) == {"nft": 1, "listings": 1, "deletions": 1}
        left = relay_ns.run("conntrack", "-L", "-p", "udp", check=False).stdout
        assert f"dport={ports[0]}" not in left, left
    finally:
        await relay.close()
