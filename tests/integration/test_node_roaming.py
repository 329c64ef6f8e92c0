"""A node whose host address goes away (it moved to another network) drops its connections to
control and reconnects from where it is now: a request parked on a connection from the old
address (the long poll) would otherwise wait out its timeout, and the new candidates would not
reach control. Real `ip monitor` and `ip addr` in a namespace the test creates; the control
plane in process (`LocalControlPlane`); the HTTP client's reset against a real HTTPS server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from rustynet.adapters.control_client import ControlClient
from rustynet.adapters.control_plane_local import LocalControlPlane
from rustynet.adapters.firewall.memory import MemoryFirewall
from rustynet.adapters.keystore.memory import MemoryKeystore
from rustynet.adapters.node_state_file import FileNodeStateStore
from rustynet.adapters.tls_cert import create_self_signed
from rustynet.adapters.tunnel.host_addresses import IpInterfaceAddresses, IpMonitorChanges
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend

from rustynet.application.node import AgentSettings, NodeAgent
from rustynet.ports.control_api import ControlUnreachable
from rustynet.ports.wire.v1 import CreateJoinKeyRequest
from tests.integration.test_control_service import World, world_with_policy
from tests.netns import Namespace, NetLab, require_in_ci, require_root

pytestmark = pytest.mark.asyncio


class CountingControl(LocalControlPlane):
    """The in-process control plane, counting `reconnect` calls."""

    reconnects = 0

    async def reconnect(self) -> None:
        self.reconnects += 1


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_in_ci("ip")
    require_root("ip")
    with NetLab() as lab:
        yield lab


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    async with world_with_policy(None) as made:
        yield made


async def _until(what: str, check: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.root
async def test_a_lost_host_address_drops_the_control_connections(
    lab: NetLab, world: World, tmp_path: Path
) -> None:
    ns: Namespace = lab.namespace()
    up0, _ = lab.veth(ns, "198.51.100.33/28", lab.namespace(), "198.51.100.35/28")
    control = CountingControl(world.service, client_ip="198.51.100.33")
    keystore = MemoryKeystore()
    keystore.open()
    agent = NodeAgent(
        control=control,
        tunnel=MemoryTunnelBackend(),
        firewall=MemoryFirewall(),
        keystore=keystore,
        state_store=FileNodeStateStore(tmp_path / "n.json"),
        clock=world.clock,
        entropy=world.entropy,
        settings=AgentSettings(interface="rnroam", endpoints=("198.51.100.33:41641",)),
        interfaces=IpInterfaceAddresses(ns.name),
        changes=IpMonitorChanges(ns.name),
    )
    created = await world.service.create_join_key(
        world.admin, CreateJoinKeyRequest(tags=("tag:client",))
    )
    await agent.join(created.token, "roamer")
    await agent.start()
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.sleep(1.0)  # the watcher took its first look at the addresses
        # An address that comes (a second network) leaves every connection as it is.
        ns.ip("addr", "add", "198.51.100.34/28", "dev", up0)
        await asyncio.sleep(agent.settings.change_debounce + 1.0)
        assert control.reconnects == 0
        # A link-local address that goes (a container's veth, an expired one) is no connection's.
        ns.ip("addr", "add", "fe80::1234/64", "dev", up0)
        await asyncio.sleep(agent.settings.change_debounce + 1.0)
        ns.ip("addr", "del", "fe80::1234/64", "dev", up0)
        await asyncio.sleep(agent.settings.change_debounce + 1.0)
        assert control.reconnects == 0
        # The address the connections were made from goes away: they are dropped, once.
        ns.ip("addr", "del", "198.51.100.33/28", "dev", up0)
        await _until("a reconnect", lambda: control.reconnects == 1, 5.0)
        await asyncio.sleep(agent.settings.change_debounce + 0.5)
        assert control.reconnects == 1
    finally:
        agent.loop.stopping = True
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_reset_ends_a_parked_request_and_the_next_one_connects_anew(
    tmp_path: Path,
) -> None:
    info = create_self_signed(
        "https://127.0.0.1:1", tmp_path / "c.pem", tmp_path / "c.key", now=datetime.now(UTC)
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(info.certificate, info.private_key)
    parked, release, peers = asyncio.Event(), asyncio.Event(), []

    async def park(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        parked.set()
        await release.wait()
        return web.Response(status=204)

    async def nodes(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"nodes": []})

    app = web.Application()
    app.router.add_get("/park", park)
    app.router.add_get("/v1/nodes", nodes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = ControlClient(f"https://127.0.0.1:{port}", info.pin, api_key=b"rnk_x_y")
    try:
        waiting = asyncio.create_task(client.request("GET", "/park", timeout=60))
        await asyncio.wait_for(parked.wait(), 5)
        started = time.monotonic()
        await client.reset()
        with pytest.raises(ControlUnreachable):
            await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 2.0
        status, _ = await client.request("GET", "/v1/nodes")
        assert status == 200
        assert peers[1] != peers[0]  # a new connection (another source port)
    finally:
        release.set()
        await client.close()
        await runner.cleanup()
