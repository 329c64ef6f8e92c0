"""rustynetd's local API and `NodeDaemon` without privileges: the in-process control plane, the
in-memory tunnel and firewall, the real aiohttp app and a real UNIX socket; plus strict
`rustynetd.toml` parsing."""

from __future__ import annotations

import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from rustynet.adapters.config import ConfigError, load_node_config
from rustynet.adapters.control_plane_local import LocalControlPlane
from rustynet.adapters.firewall.memory import MemoryFirewall
from rustynet.adapters.keystore.memory import MemoryKeystore
from rustynet.adapters.local_api import JSON_TYPE as JSON
from rustynet.adapters.local_api import LocalApiError, bind_socket, create_local_app
from rustynet.adapters.node_state_file import FileNodeStateStore
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend

from rustynet.application.node import AgentSettings, NodeDaemon, NodePorts
from rustynet.application.node.netcheck import NetcheckTools
from rustynet.bootstrap.node import default_hostname
from rustynet.ports.wire.v1 import CreateJoinKeyRequest
from tests.integration.test_control_service import World, world_with_policy


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    """An in-process control plane over a memory store, with POLICY."""
    async with world_with_policy() as made:
        yield made


def _interface(tunnel: MemoryTunnelBackend) -> str | None:
    return tunnel.interface  # a call: mypy must not carry narrowing across awaits


def _daemon(
    w: World, tmp: Path, netcheck: NetcheckTools | None = None
) -> tuple[NodeDaemon, MemoryTunnelBackend]:
    """A daemon over the memory tunnel and firewall, talking to `w`'s control plane."""
    keystore = MemoryKeystore()
    keystore.open()
    tunnel = MemoryTunnelBackend()
    ports = NodePorts(
        tunnel=tunnel,
        firewall=MemoryFirewall(),
        keystore=keystore,
        state_store=FileNodeStateStore(tmp / "node-state.json"),
        clock=w.clock,
        entropy=w.entropy,
        control_factory=lambda _url, _pin: LocalControlPlane(w.service, "198.51.100.21"),
        default_hostname=default_hostname,
        netcheck=netcheck,
    )
    return NodeDaemon(ports, AgentSettings(interface="rnapi0", long_poll_seconds=0.05)), tunnel


@pytest.mark.asyncio
async def test_up_status_down_through_the_local_api(world: World, tmp_path: Path) -> None:
    """not_enrolled → up with a token → running with node/control/backend/serial → a second
    token refused (409) → down removes the interface → up without a token → running again."""
    daemon, tunnel = _daemon(world, tmp_path)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_local_app(daemon))
    )
    await client.start_server()
    await daemon.start()
    first = await (await client.get("/status")).json()
    assert first["state"] == "not_enrolled"
    assert first["node"] is None
    no_token = await client.post("/up", json={})
    assert no_token.status == 409
    created = await world.service.create_join_key(world.admin, CreateJoinKeyRequest(tags=()))
    up = await client.post("/up", json={"token": created.token, "hostname": "delta"})
    assert up.status == 200, await up.text()
    doc = await up.json()
    assert doc["state"] == "running"
    assert doc["node"]["name"] == "delta"
    assert doc["node"]["overlay_ip"].startswith("100.")
    assert doc["backend"] == "memory"
    assert doc["peermap_serial"] >= 0
    assert set(doc["control"]) == {"url", "connected"}
    assert _interface(tunnel) == "rnapi0"
    again = await client.post("/up", json={"token": created.token})
    assert again.status == 409
    assert (await again.json())["error"] == "already_enrolled"
    down = await client.post("/down")
    assert (await down.json())["state"] == "down"
    assert _interface(tunnel) is None
    back = await client.post("/up", json={})
    assert (await back.json())["state"] == "running"
    assert _interface(tunnel) == "rnapi0"
    peers = await (await client.get("/peers")).json()
    assert peers == {"peers": []}
    metrics = await client.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'rustynet_node_info{backend="memory",state="running"} 1' in await metrics.text()
    await daemon.shutdown()
    assert _interface(tunnel) is None
    await client.close()


@pytest.mark.asyncio
async def test_rotate_key_cuts_over_and_is_refused_while_down(world: World, tmp_path: Path) -> None:
    """POST /rotate-key while down → 409 not_running; while running → a new key that control
    and the saved node state both hold, and the interface keeps running."""
    daemon, tunnel = _daemon(world, tmp_path)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_local_app(daemon))
    )
    await client.start_server()
    created = await world.service.create_join_key(world.admin, CreateJoinKeyRequest(tags=()))
    assert (await client.post("/up", json={"token": created.token})).status == 200
    state = FileNodeStateStore(tmp_path / "node-state.json").load()
    assert state is not None
    old = state.tunnel_key.to_text()
    rotated = await client.post("/rotate-key")
    assert rotated.status == 200, await rotated.text()
    doc = await rotated.json()
    assert doc["tunnel_key"] != old
    saved = FileNodeStateStore(tmp_path / "node-state.json").load()
    assert saved is not None
    assert saved.tunnel_key.to_text() == doc["tunnel_key"]
    async with world.store.unit_of_work() as uow:
        node = await uow.nodes.get(saved.node_id)
    assert node is not None
    assert node.tunnel_key.to_text() == doc["tunnel_key"]
    assert _interface(tunnel) == "rnapi0"
    await client.post("/down")
    refused = await client.post("/rotate-key")
    assert refused.status == 409
    assert (await refused.json())["error"] == "not_running"
    await daemon.shutdown()
    await client.close()


@pytest.mark.asyncio
async def test_malformed_up_bodies_are_refused(world: World, tmp_path: Path) -> None:
    """Unknown keys, non-strings, non-JSON and a bad token are 4xx (JSON errors); nothing is
    enrolled, on `up` and on `reenroll`."""
    daemon, _ = _daemon(world, tmp_path)
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(create_local_app(daemon))
    )
    await client.start_server()
    for route in ("/up", "/reenroll"):
        for body in ({"token": 5}, {"token": "x", "extra": 1}, ["token"], {"hostname": ""}):
            response = await client.post(route, json=body)
            assert response.status == 400, (route, body)
            assert (await response.json())["error"] == "bad_request", (route, body)
        not_json = await client.post(route, data=b"{not json", headers={"Content-Type": JSON})
        assert not_json.status == 400
        assert await not_json.json() == {"error": "bad_request", "detail": "the body is not JSON"}
    no_token = await client.post("/reenroll", json={})
    assert no_token.status == 400
    assert "join token is required" in (await no_token.json())["detail"]
    bad = await client.post("/up", json={"token": "rnjoin1_notatoken"})
    assert bad.status == 403
    assert (await bad.json())["error"] == "join_failed"
    assert (await (await client.get("/status")).json())["state"] == "not_enrolled"
    await client.close()


def test_socket_is_0600_stale_replaced_live_refused(tmp_path: Path) -> None:
    """bind_socket makes a 0600 socket, replaces a dead one, refuses a live one and a file."""
    path = tmp_path / "run" / "d.sock"
    live = bind_socket(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(LocalApiError, match="already listening"):
            bind_socket(path)
    finally:
        live.close()
    stale = bind_socket(path)  # the file is still there, nobody listens
    stale.close()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(LocalApiError, match="not a socket"):
        bind_socket(tmp_path / "plain")
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1)
        with pytest.raises(OSError):  # noqa: PT011 - any refusal: nothing listens now
            probe.connect(str(path))


def test_node_config_is_strict(tmp_path: Path) -> None:
    """Defaults without a file; unknown keys, bad backends, ports and names are named errors."""
    assert load_node_config(None).socket == Path("/run/rustynet/rustynetd.sock")
    good = tmp_path / "ok.toml"
    good.write_text(
        'state_dir = "s"\nbackend = "userspace"\nunderlay_endpoints = ["198.51.100.1:9"]\n'
        '[candidates]\nexclude = ["198.51.100.0/28", "2001:db8::/32"]\nnat_interval = 600\n'
    )
    parsed = load_node_config(good)
    assert parsed.state_dir == tmp_path.resolve() / "s"
    assert parsed.underlay_endpoints == ("198.51.100.1:9",)
    assert [str(p) for p in parsed.candidates_exclude] == ["198.51.100.0/28", "2001:db8::/32"]
    assert parsed.nat_interval == 600
    assert load_node_config(None).nat_interval == 300
    cases = {
        "bogus = 1": "bogus: unknown setting",
        'backend = "wg"': "backend: expected one of",
        "underlay_port = 70000": "underlay_port: must be 1-65535",
        "underlay_port = true": "underlay_port: expected an integer",
        'interface = "a-very-long-interface-name"': "interface:",
        'underlay_endpoints = ["example.org:1"]': "underlay_endpoints:",
        'underlay_endpoints = ["127.0.0.1:1"]': "underlay_endpoints: .*loopback",
        '[candidates]\nexclude = ["198.51.100.1/28"]': r"\[candidates\]\.exclude:",
        "[candidates]\nexclude = [1]": r"\[candidates\]\.exclude:",
        "[candidates]\nbogus = 1": r"\[candidates\]\.bogus: unknown setting",
        "[candidates]\nnat_interval = 5": r"\[candidates\]\.nat_interval: must be 10-86400",
        '[candidates]\nnat_interval = "1m"': r"\[candidates\]\.nat_interval: expected int",
        'keystore = "os"\npassphrase_file = "p"': "passphrase_file: only the file key store",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message):
            load_node_config(bad)
