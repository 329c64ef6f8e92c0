"""The node's relay bridge moves datagrams unchanged, and only the tunnel's own (T53).

The tunnel protocol authenticates and de-duplicates relayed packets end to end (the root e2e
tests in tests/e2e/test_malicious_relay.py tamper and replay through a real relay). What
Rustynet's own code must do is narrower and is proven here without root: every byte the tunnel
hands the bridge reaches the relay session as sent, every byte the session delivers reaches the
tunnel as sent and from the peer's own loopback endpoint, and a datagram from anything but the
tunnel's socket is never forwarded. Real UDP sockets on loopback; the session is an in-memory
stand-in for the WebSocket session (the relay itself is tested in test_relay.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from rustynet.adapters.relay.bridge import RelayBridge

from rustynet.domain.udp_relay import AllocationRefusedError, UdpGrant

pytestmark = pytest.mark.asyncio

PEER = "node_AAAAAAAAAAAAAAAA"


class QueueSession:
    """A relay session whose two directions are queues the test reads and fills."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.incoming: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    @property
    def expires_at(self) -> datetime:
        return datetime.max.replace(tzinfo=UTC)

    async def send(self, destination_node_id: str, packet: bytes) -> None:
        await self.sent.put((destination_node_id, packet))

    async def send_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for item in items:
            await self.sent.put(item)

    async def receive(self) -> tuple[str, bytes]:
        return await self.incoming.get()

    async def renew(self, token: str) -> datetime:
        return self.expires_at

    async def allocate_udp(self, peer: str) -> UdpGrant:
        raise AllocationRefusedError("unavailable")

    async def close(self) -> None:
        return None


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    return sock


@contextlib.asynccontextmanager
async def _running(
    session: QueueSession, allowed: frozenset[str] = frozenset({PEER})
) -> AsyncIterator[tuple[RelayBridge, socket.socket]]:
    """A bridge spliced onto `session` and the socket standing in for wireguard-go's."""
    tunnel = _udp()
    tunnel.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)  # whole bursts
    bridge = RelayBridge(lambda: int(tunnel.getsockname()[1]))
    bridge.allowed = lambda node_id: node_id in allowed
    task = asyncio.create_task(bridge.run(session))
    try:
        yield bridge, tunnel
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        bridge.close()
        tunnel.close()


@pytest_asyncio.fixture
async def wired() -> AsyncIterator[tuple[RelayBridge, QueueSession, socket.socket]]:
    session = QueueSession()
    async with _running(session) as (bridge, tunnel):
        yield bridge, session, tunnel


async def test_datagrams_cross_the_bridge_unchanged_both_ways(
    wired: tuple[RelayBridge, QueueSession, socket.socket],
) -> None:
    bridge, session, tunnel = wired
    endpoint = await bridge.endpoint_for(PEER)
    outgoing = [os.urandom(n) for n in (1, 148, 1420, 64)]
    for packet in outgoing:
        tunnel.sendto(packet, (str(endpoint.address), endpoint.port))
    got = [await asyncio.wait_for(session.sent.get(), 2.0) for _ in outgoing]
    assert got == [(PEER, packet) for packet in outgoing]

    incoming = [os.urandom(n) for n in (92, 1420, 32)]
    for packet in incoming:
        await session.incoming.put((PEER, packet))
    loop = asyncio.get_running_loop()
    for packet in incoming:
        data, source = await loop.run_in_executor(None, tunnel.recvfrom, 65535)
        assert data == packet
        assert source == (str(endpoint.address), endpoint.port)  # from the peer's own endpoint


async def test_a_datagram_from_anything_but_the_tunnel_is_not_forwarded(
    wired: tuple[RelayBridge, QueueSession, socket.socket],
) -> None:
    bridge, session, tunnel = wired
    endpoint = await bridge.endpoint_for(PEER)
    stranger = _udp()
    try:
        stranger.sendto(b"injected", (str(endpoint.address), endpoint.port))
        tunnel.sendto(b"genuine", (str(endpoint.address), endpoint.port))
        assert await asyncio.wait_for(session.sent.get(), 2.0) == (PEER, b"genuine")
        await asyncio.sleep(0.1)
        assert session.sent.empty()
        assert bridge.dropped == 1
    finally:
        stranger.close()


# --- runs of datagrams (the batched hot path) -------------------------------------------------

BURST = 500


class CountingSession(QueueSession):
    """A QueueSession that also counts `send_many` calls (one per relay message)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages = 0

    async def send_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.messages += 1
        await super().send_many(items)


async def _received(tunnel: socket.socket, count: int) -> list[tuple[bytes, tuple[str, int]]]:
    loop = asyncio.get_running_loop()
    return [await loop.run_in_executor(None, tunnel.recvfrom, 65535) for _ in range(count)]


async def test_a_burst_from_the_tunnel_reaches_the_relay_complete_in_order_and_batched() -> None:
    """BURST datagrams sent back to back by the tunnel arrive at the session complete and in
    order, in a few relay messages (runs per wake-up), not one message per datagram; a
    stranger's datagram in the middle of the burst is dropped and counted."""
    session = CountingSession()
    with contextlib.closing(_udp()) as stranger:
        async with _running(session) as (bridge, tunnel):
            endpoint = await bridge.endpoint_for(PEER)
            where = (str(endpoint.address), endpoint.port)
            outgoing = [
                os.urandom(64 + (i * 37) % 1400) + i.to_bytes(2, "big") for i in range(BURST)
            ]
            for i, packet in enumerate(outgoing):
                tunnel.sendto(packet, where)
                if i == BURST // 2:
                    stranger.sendto(b"injected", where)
            got = [await asyncio.wait_for(session.sent.get(), 2.0) for _ in outgoing]
            assert got == [(PEER, packet) for packet in outgoing]
            await asyncio.sleep(0.05)
            assert session.sent.empty()
            assert bridge.dropped == 1
            assert bridge.to_relay == BURST
            assert session.messages <= BURST // 20  # ~48 KiB per message: about a dozen here


async def test_a_burst_from_the_relay_reaches_the_tunnel_complete_in_order_per_peer() -> None:
    """Runs of equal-size datagrams (sent with UDP GSO), odd sizes and an empty datagram,
    interleaved between two peers: the tunnel gets every datagram unchanged, in order, from
    the right peer's endpoint; a node not allowed gets nothing delivered."""
    other = "node_BBBBBBBBBBBBBBBB"
    session = QueueSession()
    async with _running(session, frozenset({PEER, other})) as (bridge, tunnel):
        sizes = [1452] * 150 + [148, 0, 1452, 1452, 92] + [1200] * 70 + [32]
        incoming = [(PEER if i % 40 < 30 else other, os.urandom(n)) for i, n in enumerate(sizes)]
        for i, item in enumerate(incoming):
            session.incoming.put_nowait(item)
            if i == 100:
                session.incoming.put_nowait(("node_NOTALLOWED00000", b"x" * 1452))
        got = await asyncio.wait_for(_received(tunnel, len(incoming)), 10.0)
        ports = {node: (await bridge.endpoint_for(node)).port for node in (PEER, other)}
        for node, port in ports.items():
            from_node = [data for data, source in got if source[1] == port]
            assert from_node == [packet for n, packet in incoming if n == node]
        assert bridge.from_relay == len(incoming)
        assert bridge.dropped == 1
