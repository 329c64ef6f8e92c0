"""`GET /netcheck` through a running `NodeDaemon` (in-process control plane, memory tunnel, the
real aiohttp app): the daemon measures with its applied peer map's STUN servers (two ports of
a STUN service on loopback) and relays (a TCP listener), from the port its probe may use, and
answers 409 before it has a tunnel and a peer map, 404 when it has no probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.local_api import create_local_app
from rustynet.adapters.storage.memory import MemoryStore
from rustynet.adapters.stun.nat_probe import SocketNatProbe, free_port
from rustynet.adapters.stun.server import StunServer
from rustynet.adapters.tcp_latency import TcpConnectLatency
from rustynet.adapters.tunnel.host_addresses import IpInterfaceAddresses

from rustynet.application.node.netcheck import NetcheckTools
from rustynet.domain.netmap import RelayEntry
from rustynet.ports.wire.v1 import CreateJoinKeyRequest
from tests.integration.test_control_service import POLICY, make_world
from tests.integration.test_local_api import _daemon
from tests.integration.test_stun_service import server  # noqa: F401 - the STUN fixture

pytestmark = pytest.mark.asyncio
PIN = "sha256//" + "A" * 43 + "="


@pytest_asyncio.fixture
async def relay_port() -> AsyncIterator[int]:
    """A TCP listener standing in for a relay's WSS port (netcheck only connects)."""
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()


async def test_daemon_netcheck_uses_the_peer_maps_servers_and_relays(
    server: StunServer,  # noqa: F811 - the fixture imported from test_stun_service
    relay_port: int,
    tmp_path: Path,
) -> None:
    servers = tuple(f"{host}:{port}" for host, port in server.bound)
    relay = RelayEntry.from_texts("relay-1", f"wss://127.0.0.1:{relay_port}/v1/relay", PIN)
    world = await make_world(MemoryStore(), relays=(relay,), stun=servers)
    await world.service.put_policy(world.admin, POLICY)
    tools = NetcheckTools(
        SocketNatProbe(OsEntropy()), TcpConnectLatency(), IpInterfaceAddresses(), free_port
    )
    daemon, _ = _daemon(world, tmp_path, tools)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_local_app(daemon, netcheck=daemon))
    )
    await client.start_server()
    await daemon.start()
    try:
        early = await client.get("/netcheck")
        assert early.status == 409
        assert (await early.json())["error"] == "not_running"
        created = await world.service.create_join_key(world.admin, CreateJoinKeyRequest(tags=()))
        up = await client.post("/up", json={"token": created.token, "hostname": "nc"})
        assert up.status == 200, await up.text()
        start = time.monotonic()
        answer = await client.get("/netcheck")
        elapsed = time.monotonic() - start
        assert answer.status == 200, await answer.text()
        doc = await answer.json()
    finally:
        await daemon.shutdown()
        await client.close()
        await world.store.close()
    assert doc["measured"] == "ephemeral-port"  # no tunnel-port probe wired in this daemon
    v4 = doc["ipv4"]
    port = doc["local_port"]
    assert [s["server"] for s in v4["servers"]] == list(servers)
    assert v4["reflexive"] == [f"127.0.0.1:{port}"]
    assert v4["nat"] == "public"  # loopback carries 127.0.0.1: seen as itself
    assert doc["ipv6"] is None
    by_kind = {(t["kind"], t["id"]): t for t in doc["latency"]}
    assert by_kind[("relay", "relay-1")]["target"] == f"127.0.0.1:{relay_port}"
    assert by_kind[("relay", "relay-1")]["rtt_ms"] is not None
    assert by_kind[("control", None)]["target"] == "control.example.net:8443"
    assert elapsed < 5, elapsed


async def test_no_probe_is_404(tmp_path: Path) -> None:
    world = await make_world(MemoryStore())
    daemon, _ = _daemon(world, tmp_path)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_local_app(daemon))
    )
    await client.start_server()
    try:
        answer = await client.get("/netcheck")
        assert answer.status == 404
        assert (await answer.json())["error"] == "not_available"
    finally:
        await client.close()
        await world.store.close()
