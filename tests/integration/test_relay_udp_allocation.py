"""UDP relay allocations over the real relay (TLS 1.3 on loopback, real relay tokens): the
`udp_allocate` ask in an authenticated session, binds over loopback UDP, and what the relay
tells its forwarder (a recording double here; the kernel forwarder is exercised in
tests/e2e/test_relay_udp.py). No root needed."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.control_client import pinned_ssl_context
from rustynet.adapters.http_api.tls import server_ssl_context
from rustynet.adapters.relay.client import WebSocketRelaySession, WebSocketRelayTransport
from rustynet.adapters.relay.config import (
    RelayConfigError,
    UdpConfig,
    load_relay_config,
    render_relay_config,
)
from rustynet.adapters.relay.server import create_relay_app, make_runner
from rustynet.adapters.relay.udp_sessions import UdpRelay
from rustynet.adapters.tls_cert import create_self_signed

from rustynet.application.relay import RelayService
from rustynet.domain.relay import RelayLimits, RelayTrust
from rustynet.domain.udp_relay import (
    Allocation,
    AllocationRefusedError,
    AllocationTable,
    ForwardingBatch,
    UdpGrant,
    UdpRelayLimits,
)
from rustynet.ports.relay import RelayEndpoint
from tests.integration.test_relay import ENTROPY, ISSUER, RELAY_ID, Hierarchy, Node
from tests.integration.test_relay_cli import _init

LOOPBACK = "127.0.0.1"


class RecordingForwarding:
    """`Forwarding` double: what the relay asked for, in order (one entry per allocation of
    each batch: removals, installs, refreshes), and the batches."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Allocation, tuple[object, ...]]] = []
        self.batches: list[ForwardingBatch] = []
        self.changed = asyncio.Event()

    async def apply(self, batch: ForwardingBatch, now: datetime) -> None:
        self.batches.append(batch)
        self.calls += [("remove", allocation, ()) for allocation in batch.removals]
        for kind, allocations in (("install", batch.installs), ("refresh", batch.refreshes)):
            for allocation in allocations:
                sources = tuple(side.source for side in allocation.sides)
                self.calls.append((kind, allocation, sources))
        self.changed.set()


Start = Callable[[bool], Awaitable[tuple[RelayEndpoint, UdpRelay | None, RecordingForwarding]]]


@pytest_asyncio.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []
    relays: list[UdpRelay] = []

    async def started(with_udp: bool) -> tuple[RelayEndpoint, UdpRelay | None, RecordingForwarding]:
        cert = create_self_signed(
            "https://127.0.0.1:1", tmp_path / "r.crt", tmp_path / "r.key", now=datetime.now(UTC)
        )
        hierarchy = HIERARCHY
        trust = RelayTrust(RELAY_ID, ISSUER, hierarchy.root_key.public_key.fingerprint())
        service = RelayService(trust, RelayLimits(), SystemClock(), ENTROPY)
        forwarding = RecordingForwarding()
        udp = None
        if with_udp:
            first = 20000 + 16 * secrets.randbelow(2000)  # other tests run at the same time
            limits = UdpRelayLimits(port_first=first, port_last=first + 15, per_node=2, total=4)
            table = AllocationTable(limits, ENTROPY)
            udp = UdpRelay(LOOPBACK, table, forwarding, SystemClock())
            await udp.start()
            relays.append(udp)
        runner = make_runner(create_relay_app(service, udp=udp), shutdown_timeout=1.0)
        await runner.setup()
        ssl_context = server_ssl_context(cert.certificate, cert.private_key)
        site = web.TCPSite(runner, LOOPBACK, 0, ssl_context=ssl_context)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return (
            RelayEndpoint(RELAY_ID, f"wss://127.0.0.1:{port}/v1/relay", cert.pin),
            udp,
            forwarding,
        )

    yield started
    for runner in runners:
        await runner.cleanup()
    for relay in relays:
        await relay.close()


HIERARCHY = Hierarchy.make()


async def _connect(endpoint: RelayEndpoint, node: Node) -> WebSocketRelaySession:
    transport = WebSocketRelayTransport(ssl_context=pinned_ssl_context, timeout=5.0)
    return await transport.connect(endpoint, node.auth(HIERARCHY, HIERARCHY.token(node)))


def _send(grant: UdpGrant, packet: bytes) -> tuple[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.sendto(packet, (grant.relay_address, grant.relay_port))
        return LOOPBACK, int(sock.getsockname()[1])


async def _refusal(session: WebSocketRelaySession, peer: str) -> str:
    with pytest.raises(AllocationRefusedError) as refused:
        await session.allocate_udp(peer)
    return refused.value.reason


async def _settled(udp: UdpRelay) -> None:
    await asyncio.sleep(0.1)  # the datagrams reach the bind sockets
    await udp.settled()


@pytest.mark.asyncio
async def test_both_sides_ask_bind_and_the_forwarder_gets_both_sources(start: Start) -> None:
    endpoint, udp, forwarding = await start(True)
    assert udp is not None
    a, b = Node.make("node_a"), Node.make("node_b")
    sa, sb = await _connect(endpoint, a), await _connect(endpoint, b)
    try:
        ga, gb = await sa.allocate_udp("node_b"), await sb.allocate_udp("node_a")
        assert ga.allocation_id == gb.allocation_id
        assert (ga.peer, gb.peer) == ("node_b", "node_a")
        assert ga.relay_port != gb.relay_port
        assert ga.bind_key != gb.bind_key
        assert ga.expires_at <= datetime.now(UTC) + timedelta(seconds=121)
        # A forgery (B's key for A's port) and A's bind alone install nothing.
        _send(ga, UdpGrant.bind_packet(gb, 1)[:-32] + bytes(32))
        source_a = _send(ga, ga.bind_packet(1))
        await _settled(udp)
        assert forwarding.calls == []
        source_b = _send(gb, gb.bind_packet(1))
        await _settled(udp)
        ((action, _, sources),) = forwarding.calls
        assert (action, sources) == ("install", (source_a, source_b))
        assert udp.counters.refused_binds == 1
        # A replay of A's bind from another socket changes nothing.
        _send(ga, ga.bind_packet(1))
        await _settled(udp)
        assert len(forwarding.calls) == 1
        assert udp.counters.refused_binds == 2
    finally:
        await sa.close()
        await sb.close()
    await asyncio.sleep(0.2)
    await udp.settled()
    assert forwarding.calls[-1][0] == "remove"
    assert len(udp.table) == 0


@pytest.mark.asyncio
async def test_renewal_refreshes_an_active_allocation_with_the_new_expiry(start: Start) -> None:
    """Renewing both tokens in session moves the allocation's expiry; the forwarder gets the
    allocation again as a refresh (new element timeouts, sources unchanged)."""
    endpoint, udp, forwarding = await start(True)
    assert udp is not None
    a, b = Node.make("node_a"), Node.make("node_b")
    sa, sb = await _connect(endpoint, a), await _connect(endpoint, b)
    try:
        ga, gb = await sa.allocate_udp("node_b"), await sb.allocate_udp("node_a")
        _send(ga, ga.bind_packet(1))
        _send(gb, gb.bind_packet(1))
        await _settled(udp)
        ((_, allocation, _),) = forwarding.calls
        before = allocation.expires_at
        await asyncio.sleep(1.1)  # token expiries have a resolution of one second
        await sa.renew(HIERARCHY.token(a))
        await sb.renew(HIERARCHY.token(b))
        await udp.settled()
        assert [call[0] for call in forwarding.calls][:2] == ["install", "refresh"]
        assert {call[0] for call in forwarding.calls[1:]} == {"refresh"}
        assert allocation.expires_at > before
    finally:
        await sa.close()
        await sb.close()


@pytest.mark.asyncio
async def test_asks_beyond_the_per_node_bound_and_bad_peers_are_refused(start: Start) -> None:
    endpoint, _, _ = await start(True)
    session = await _connect(endpoint, Node.make("node_a"))
    try:
        await session.allocate_udp("node_b")
        await session.allocate_udp("node_c")
        assert await _refusal(session, "node_d") == "node_limit"
        assert await _refusal(session, "node_a") == "bad_peer"
    finally:
        await session.close()


@pytest.mark.asyncio
async def test_a_relay_without_udp_refuses_every_ask(start: Start) -> None:
    endpoint, _, _ = await start(False)
    session = await _connect(endpoint, Node.make("node_a"))
    try:
        assert await _refusal(session, "node_b") == "unavailable"
    finally:
        await session.close()


def test_the_udp_table_parses_renders_back_and_refuses_bad_values(tmp_path: Path) -> None:
    """`[udp]` in relay.toml: absent by default (no UDP sessions); parsed, rendered back by
    the config writer; every bad value refused naming the key."""
    config, _ = _init(tmp_path, HIERARCHY, 8444)
    text = config.read_text()
    assert load_relay_config(config).udp is None
    udp = '\n[udp]\naddress = "203.0.113.5"\nport_first = 41000\nport_last = 41099\n'
    config.write_text(text + udp)  # 100 ports cannot hold the default 500 pairs
    with pytest.raises(RelayConfigError, match=r"\[udp\]: the port range"):
        load_relay_config(config)
    limits = UdpRelayLimits(port_first=41000, port_last=41099, total=50)
    config.write_text(text + udp + "total = 50\n")
    parsed = load_relay_config(config)
    assert parsed.udp == UdpConfig("203.0.113.5", limits)
    config.write_text(render_relay_config(parsed, tmp_path))
    assert load_relay_config(config) == parsed
    for bad, key in [
        ('address = "2001:db8::1"', r"\[udp\]\.address"),
        ('address = "203.0.113.5"\nport_first = "40000"', r"\[udp\]\.port_first"),
        ('address = "203.0.113.5"\ncolour = 1', r"\[udp\]\.colour"),
        ('address = "203.0.113.5"\nport_first = 80', r"\[udp\]"),
    ]:
        config.write_text(text + "\n[udp]\n" + bad + "\n")
        with pytest.raises(RelayConfigError, match=key):
            load_relay_config(config)
