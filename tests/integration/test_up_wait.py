"""`rustynet up` waits (bounded) for the first peer map, or says plainly that it is waiting.

The real `rustynet` CLI code talks over a real UNIX socket to the real local API, served by a
`NodeDaemon` on the in-process control plane with the in-memory tunnel. The control plane's
peer maps are slowed down (or withheld) the way a distant or unreachable control plane would:
right after a successful `up`, the daemon has no map yet.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from rustynet.adapters.cli.main import build_parser
from rustynet.adapters.cli.node import run_node_command
from rustynet.adapters.control_plane_local import LocalControlPlane
from rustynet.adapters.firewall.memory import MemoryFirewall
from rustynet.adapters.keystore.memory import MemoryKeystore
from rustynet.adapters.local_api import LocalApiServer
from rustynet.adapters.node_state_file import FileNodeStateStore
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend

from rustynet.application.node import AgentSettings, NodeDaemon, NodePorts
from rustynet.bootstrap.node import default_hostname
from rustynet.ports.control_plane import ControlUnreachable, NodeCredentials
from rustynet.ports.wire.v1 import CreateJoinKeyRequest, PeerMapDelivery
from tests.integration.test_control_service import World, world_with_policy

pytestmark = pytest.mark.asyncio


class DistantControl(LocalControlPlane):
    """Peer maps arrive only after `delay` seconds, or never while `withheld`."""

    delay = 0.0
    withheld = False

    async def peer_map(
        self, auth: NodeCredentials, after: int, timeout: float
    ) -> PeerMapDelivery | None:
        if self.withheld:
            raise ControlUnreachable("control plane is unreachable")
        await asyncio.sleep(self.delay)
        return await super().peer_map(auth, after, timeout)


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    """An in-process control plane over a memory store, with POLICY."""
    async with world_with_policy() as made:
        yield made


async def _serve(w: World, tmp: Path, control: DistantControl) -> tuple[NodeDaemon, LocalApiServer]:
    keystore = MemoryKeystore()
    keystore.open()
    ports = NodePorts(
        tunnel=MemoryTunnelBackend(),
        firewall=MemoryFirewall(),
        keystore=keystore,
        state_store=FileNodeStateStore(tmp / "node-state.json"),
        clock=w.clock,
        entropy=w.entropy,
        control_factory=lambda _url, _pin: control,
        default_hostname=default_hostname,
    )
    daemon = NodeDaemon(
        ports, AgentSettings(interface="rnupw0", long_poll_seconds=0.05, backoff_initial=0.05)
    )
    server = LocalApiServer(daemon, tmp / "rustynetd.sock")
    await server.start()
    return daemon, server


async def _up(socket: Path, token: str, *extra: str) -> tuple[int, str, str, float]:
    ns = build_parser().parse_args(["--socket", str(socket), "up", "--token", token, *extra])
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    code = await asyncio.to_thread(run_node_command, ns, out, err)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - started


async def test_up_waits_for_the_first_map(world: World, tmp_path: Path) -> None:
    """Maps take 1 s: `up` says it waits, then prints `connected` and a serial above 0."""
    control = DistantControl(world.service, "198.51.100.41")
    control.delay = 1.0
    daemon, server = await _serve(world, tmp_path, control)
    created = await world.service.create_join_key(world.admin, CreateJoinKeyRequest(tags=()))
    try:
        code, out, err, _ = await _up(server.path, created.token, "--wait", "10")
    finally:
        await daemon.shutdown()
        await server.close()
    assert code == 0, err
    assert "waiting up to 10 s for the first peer map" in err
    assert "(connected)" in out
    assert "NOT connected" not in out
    assert "peer map: serial 0" not in out
    assert "peer map: serial " in out


async def test_up_without_a_map_says_it_is_waiting_and_returns_in_time(
    world: World, tmp_path: Path
) -> None:
    """Control never delivers a map: `up --wait 1` returns within the bound (+ slack), exit 0,
    and says plainly that no map arrived yet instead of a bare `serial 0`."""
    control = DistantControl(world.service, "198.51.100.42")
    control.withheld = True
    daemon, server = await _serve(world, tmp_path, control)
    created = await world.service.create_join_key(world.admin, CreateJoinKeyRequest(tags=()))
    try:
        code, out, err, took = await _up(server.path, created.token, "--wait", "1")
    finally:
        await daemon.shutdown()
        await server.close()
    assert code == 0, err
    assert took < 1 + 5  # the bound plus generous slack for a loaded machine
    assert "waiting up to 1 s" in err
    assert "peer map: none yet (waiting for the first map from control)" in out
    assert "no peer map has arrived yet" in out


async def test_up_wait_rejects_bad_values(tmp_path: Path) -> None:
    """--wait takes 0-3600 seconds; anything else is a usage error (exit 2)."""
    for bad in ("-1", "nan", "inf", "4000", "soon"):
        with pytest.raises(SystemExit) as caught:
            build_parser().parse_args(["--socket", str(tmp_path / "s"), "up", "--wait", bad])
        assert caught.value.code == 2


# --- re-enrolling a revoked node (`rustynet up --reenroll`) ----------------------------------


async def _cli(socket: Path, *args: str) -> tuple[int, str, str]:
    ns = build_parser().parse_args(["--socket", str(socket), *args])
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run_node_command, ns, out, err)
    return code, out.getvalue(), err.getvalue()


async def _wait_state(daemon: NodeDaemon, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while daemon.lifecycle != state:
        assert time.monotonic() < deadline, f"still {daemon.lifecycle}, wanted {state}"
        await asyncio.sleep(0.05)


async def test_reenroll_is_refused_unless_revoked_then_joins_with_fresh_keys(
    world: World, tmp_path: Path
) -> None:
    """`up --reenroll` on a running node, without a token, or with a malformed token changes
    nothing; once control revoked the node it discards the revoked identity and node state,
    keeps the name and joins as a new node with new keys."""
    control = DistantControl(world.service, "198.51.100.43")
    daemon, server = await _serve(world, tmp_path, control)
    state_store = daemon.ports.state_store
    keystore = daemon.ports.keystore
    first = await world.service.create_join_key(world.admin, CreateJoinKeyRequest(tags=()))
    second = await world.service.create_join_key(world.admin, CreateJoinKeyRequest(tags=()))
    try:
        code, _, err = await _cli(server.path, "up", "--token", first.token, "--hostname", "echo")
        assert code == 0, err
        old = state_store.load()
        assert old is not None
        old_identity = bytes(keystore.get("node.identity"))

        # Not revoked: refused, nothing discarded.
        code, _, err = await _cli(server.path, "up", "--reenroll", "--token", second.token)
        assert code == 1
        assert "not revoked" in err
        assert state_store.load() == old
        assert bytes(keystore.get("node.identity")) == old_identity

        await world.service.revoke_node(world.admin, old.node_id)
        await _wait_state(daemon, "revoked")
        code, _, err = await _cli(server.path, "up", "--token", second.token)
        assert code == 1
        assert "--reenroll" in err  # the refusal names the way back

        # Revoked, but no token or a malformed one: refused, nothing discarded.
        code, _, err = await _cli(server.path, "up", "--reenroll")
        assert code == 2
        assert "needs a new join token" in err
        code, _, err = await _cli(server.path, "up", "--reenroll", "--token", "rnjoin1_bogus")
        assert code == 1
        assert "not a valid join token" in err
        assert state_store.load() == old
        assert bytes(keystore.get("node.identity")) == old_identity

        # The documented way: delete the revoked record too, so its name is free again.
        await world.service.delete_node(world.admin, old.node_id)
        code, out, err = await _cli(server.path, "up", "--reenroll", "--token", second.token)
        assert code == 0, err
        assert "(connected)" in out
        new = state_store.load()
        assert new is not None
        assert new.node_id != old.node_id
        assert new.name == "echo"  # the old name, asked for again
        assert bytes(keystore.get("node.identity")) != old_identity
        assert daemon.lifecycle == "running"
        nodes = {n.id: n.state for n in await world.service.list_nodes(world.admin)}
        assert nodes == {new.node_id: "active"}
    finally:
        await daemon.shutdown()
        await server.close()
