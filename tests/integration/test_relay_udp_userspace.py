"""The userspace fallback's forwarding rule on loopback (no root): between the two bound
sources only, only while installed, GRO/GSO runs arrive as the datagrams that were sent, and
bind packets go to the event loop, not to the peer."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from rustynet.adapters.relay.udp_userspace import UserspaceForwarding

from rustynet.domain.udp_relay import (
    BIND_MAGIC,
    Allocation,
    AllocationTable,
    Source,
    UdpRelayLimits,
)
from tests.doubles import CountingEntropy

LOOPBACK = "127.0.0.1"
LATER = datetime.now(UTC) + timedelta(seconds=120)


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(0.5)
    return sock


def _source(sock: socket.socket) -> Source:
    return LOOPBACK, int(sock.getsockname()[1])


def _received(sock: socket.socket) -> list[bytes]:
    got = []
    sock.settimeout(0.3)
    while True:
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            return got


class Lab:
    def __init__(self) -> None:
        first = 20000 + 16 * secrets.randbelow(2000)
        limits = UdpRelayLimits(port_first=first, port_last=first + 15, per_node=2, total=4)
        self.table = AllocationTable(limits, CountingEntropy())
        self.allocation, _ = self.table.ask("node-a", "node-b", LATER)
        self.table.ask("node-b", "node-a", LATER)
        self.a, self.b, self.evil = _socket(), _socket(), _socket()
        self.binds: list[tuple[int, bytes, Source]] = []
        self.forwarding = UserspaceForwarding(LOOPBACK)

    def deliver(self, port: int, data: bytes, source: Source) -> None:
        self.binds.append((port, data, source))

    def to_relay(self, sock: socket.socket, side: int, data: bytes) -> None:
        port = self.allocation.sides[side].port
        sock.sendto(data, (LOOPBACK, port))

    def close(self) -> None:
        self.forwarding.close(self.allocation)
        for sock in (self.a, self.b, self.evil):
            sock.close()


@pytest_asyncio.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab()
    await lab.forwarding.open(lab.allocation, lab.deliver)
    allocation: Allocation = lab.allocation
    allocation.first.source, allocation.second.source = _source(lab.a), _source(lab.b)
    yield lab
    lab.close()


@pytest.mark.asyncio
async def test_only_the_bound_sources_are_forwarded_and_only_while_installed(lab: Lab) -> None:
    lab.to_relay(lab.a, 0, b"\x04early")
    await asyncio.sleep(0.1)
    assert await asyncio.to_thread(_received, lab.b) == []  # not installed yet
    await lab.forwarding.install(lab.allocation, datetime.now(UTC))
    lab.to_relay(lab.a, 0, b"\x04a-to-b")
    lab.to_relay(lab.b, 1, b"\x04b-to-a")
    lab.to_relay(lab.evil, 0, b"\x04evil-to-b")  # an unbound source at A's port
    lab.to_relay(lab.evil, 1, b"\x04evil-to-a")
    assert await asyncio.to_thread(_received, lab.b) == [b"\x04a-to-b"]
    assert await asyncio.to_thread(_received, lab.a) == [b"\x04b-to-a"]
    assert lab.forwarding.forwarded(lab.allocation) == (1, 1)
    await lab.forwarding.remove(lab.allocation)
    lab.to_relay(lab.a, 0, b"\x04after")
    assert await asyncio.to_thread(_received, lab.b) == []


@pytest.mark.asyncio
async def test_bind_packets_go_to_the_loop_never_to_the_peer(lab: Lab) -> None:
    await lab.forwarding.install(lab.allocation, datetime.now(UTC))
    bind = BIND_MAGIC + bytes(56)
    lab.to_relay(lab.evil, 0, bind)
    lab.to_relay(lab.a, 0, bind)
    assert await asyncio.to_thread(_received, lab.b) == []
    port = lab.allocation.first.port
    assert lab.binds == [(port, bind, _source(lab.evil)), (port, bind, _source(lab.a))]


@pytest.mark.asyncio
async def test_a_burst_arrives_as_the_datagrams_sent(lab: Lab) -> None:
    """GRO may coalesce the burst into one buffer; GSO must split it back into the same
    datagrams."""
    await lab.forwarding.install(lab.allocation, datetime.now(UTC))
    sent = [bytes([4, i]) + bytes(1398) for i in range(40)]
    for datagram in sent:
        lab.to_relay(lab.a, 0, datagram)
    got = await asyncio.to_thread(_received, lab.b)
    assert got == sent
