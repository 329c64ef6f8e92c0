"""Default deny with no policy: until an admin stores one, no node can reach any other.

Through the control service (memory and SQLite stores): three enrolled nodes, no policy. Each
node's signed peer map, verified by its acceptor, lists no peer and no inbound rule; the
state the node derives from it (`desired_state`, what the tunnel and packet filter get) has no
peer, no route and the deny-all ruleset, which admits no new flow from any other node's address
on any protocol. The positive control stores a policy and sees the same harness report a peer
and an admitted flow, so an empty answer above is not an artefact of the harness.
"""

from __future__ import annotations

import ipaddress

import pytest

from rustynet.domain.netmap import PeerMap
from rustynet.domain.packet_filter import DENY_ALL
from rustynet.domain.policy import Proto
from rustynet.domain.reconcile import DesiredState, desired_state
from tests.integration.test_control_service import POLICY, Node, World, enroll, world

__all__ = ["world"]  # the store-parametrised fixture: a fresh control plane, no policy stored

FLOWS = [(Proto.TCP, 22), (Proto.TCP, 443), (Proto.UDP, 53), (Proto.UDP, 41641), (Proto.ICMP, None)]


async def accepted_map(world: World, node: Node) -> PeerMap:
    response = await world.service.peer_map(node.auth(), node.acceptor.watermark, timeout=0)
    assert response is not None
    return node.acceptor.accept(response.envelope, world.clock.now())


def derived(peer_map: PeerMap) -> DesiredState:
    return desired_state(peer_map, peer_map.self_entry.tunnel_key)


def admitted(state: DesiredState, sources: list[Node]) -> list[tuple[str, Proto, int | None]]:
    """Every (source address, protocol, port) of FLOWS the node's packet filter admits."""
    return [
        (address, proto, port)
        for source in sources
        for address in source.result.overlay_addresses
        for proto, port in FLOWS
        if state.ruleset.admits(ipaddress.ip_interface(address).ip, proto, port)
    ]


@pytest.mark.asyncio
async def test_with_no_policy_no_node_sees_or_reaches_another(world: World) -> None:
    """Exact: no peers, no inbound rules, deny-all filter, for every node."""
    server = await enroll(world, "server", ("tag:server",), ip="198.51.100.11")
    client = await enroll(world, "laptop", ("tag:client",), ip="198.51.100.12")
    plain = await enroll(world, "plain", ip="198.51.100.13")
    nodes = [server, client, plain]
    for node in nodes:
        peer_map = await accepted_map(world, node)
        assert peer_map.policy_version == 0  # nothing stored
        assert peer_map.peers == ()
        assert peer_map.inbound == ()
        state = derived(peer_map)
        assert state.peers == ()
        assert state.routes == ()
        assert state.ruleset == DENY_ALL
        assert admitted(state, [n for n in nodes if n is not node]) == []

    # Positive control: a policy letting clients reach servers on tcp/22 shows up at once.
    await world.service.put_policy(world.admin, POLICY)
    server_map = await accepted_map(world, server)
    assert [p.id for p in server_map.peers] == [client.result.node_id]
    client_address = client.result.overlay_addresses[0]
    assert admitted(derived(server_map), [client, plain]) == [(client_address, Proto.TCP, 22)]
