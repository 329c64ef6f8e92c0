"""The paths keeper with UDP relay legs (`application.node.paths` + `relay_udp`), fed scripted
tunnel reads: a pair whose NATs rule out direct goes to the relay at once; once a handshake
through the bridge confirms it, the node asks for the pair's allocation, binds from the tunnel
port to the granted address, points the tunnel there, and only the tunnel's own packets there
make it `udp`; those packets never count as a direct path; a new relay session starts over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

import pytest
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend

from rustynet.application.node.paths import PathKeeper, Plan
from rustynet.application.node.settings import AgentSettings
from rustynet.domain import path as paths
from rustynet.domain.keys import TunnelKey, TunnelKeyScheme
from rustynet.domain.nat import NatClass
from rustynet.domain.netmap import PeerEntry, PeerMap, SelfEntry, build_peer_map
from rustynet.domain.tunnel import Capability, PeerStats, UnderlayEndpoint
from rustynet.domain.udp_relay import AllocationRefusedError, UdpGrant
from rustynet.ports.relay import RelaySession
from tests.doubles import FakeClock

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 12, 8, 3, 0, tzinfo=UTC)
BRIDGE = UnderlayEndpoint.parse("127.0.0.1:50001")
RELAY = UnderlayEndpoint.parse("203.0.113.50:40001")
KEY_B = TunnelKey(TunnelKeyScheme.X25519, bytes([2]) * 32)


class Bridge:
    """The relay bridge's port: one loopback endpoint for the one peer."""

    allowed: Callable[[str], bool] = staticmethod(lambda _: True)

    async def endpoint_for(self, node_id: str) -> UnderlayEndpoint:
        return BRIDGE

    def is_bridge_endpoint(self, endpoint: UnderlayEndpoint | None) -> bool:
        return endpoint == BRIDGE

    def keep_only(self, node_ids: set[str]) -> None:
        return None

    async def run(self, session: RelaySession) -> None:
        return None

    def close(self) -> None:
        return None


class Session:
    """A relay session that grants every ask at RELAY (and counts the asks)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def allocate_udp(self, peer: str) -> UdpGrant:
        self.asked.append(peer)
        return UdpGrant(peer, bytes(16), str(RELAY.address), RELAY.port, bytes(32), T0)


class Sender:
    """The tunnel-port sender: records binds."""

    def __init__(self) -> None:
        self.binds: list[tuple[UnderlayEndpoint, bytes]] = []

    async def punch(self, targets: tuple[UnderlayEndpoint, ...], count: int) -> int:
        return 0

    async def send(self, target: UnderlayEndpoint, payload: bytes) -> bool:
        self.binds.append((target, payload))
        return True


def peer_map() -> PeerMap:
    me = SelfEntry(
        "node_a", "a", ("100.64.0.1/32",), TunnelKey(TunnelKeyScheme.X25519, bytes([1]) * 32), ()
    )
    b = PeerEntry(
        "node_b", "b", ("100.64.0.2/32",), KEY_B, T0 + timedelta(days=1), nat=NatClass.HARD
    )
    return build_peer_map(
        self_entry=me,
        peers=[b],
        inbound=[],
        serial=1,
        policy_version=1,
        now=T0,
        ttl=timedelta(hours=1),
    )


def make_keeper(clock: FakeClock, sender: Sender, session: Callable[[], object]) -> PathKeeper:
    """A paths keeper over the fakes above: one hard-NAT peer, a relay that is up."""
    return PathKeeper(
        tunnel=MemoryTunnelBackend({Capability.RELAY_ENDPOINTS, Capability.ROAMING}),
        bridge=Bridge(),
        clock=clock,
        settings=AgentSettings(interface="rn0"),
        current_map=peer_map,
        relay_up=lambda: True,
        puncher=sender,
        relay_session=session,  # type: ignore[arg-type]
        own_nat=lambda: NatClass.HARD,
    )


def read(
    endpoint: UnderlayEndpoint, rx: int, handshake: datetime | None
) -> Mapping[TunnelKey, PeerStats]:
    return {KEY_B: PeerStats(KEY_B, handshake, rx, rx, endpoint)}


async def test_a_relayed_pair_moves_to_the_granted_udp_port_only_on_the_tunnels_own_packets() -> (
    None
):
    clock = FakeClock(T0)
    session, sender = Session(), Sender()
    current: list[Session | None] = [session]
    keeper = make_keeper(clock, sender, lambda: current[0])

    async def plan(seconds: float, stats: Mapping[TunnelKey, PeerStats]) -> Plan:
        clock.current = T0 + timedelta(seconds=seconds)
        done = await keeper.endpoints(clock.now(), stats)
        await asyncio.sleep(0)  # the ask task runs
        return done

    first = await plan(0.1, {})
    assert keeper.path_of("node_b") == "trying"  # on the relay at once: both NATs hard
    assert keeper.controller("node_b").phase is paths.PathPhase.RELAY  # type: ignore[union-attr]
    assert first.endpoints[KEY_B] == BRIDGE
    assert session.asked == []  # nothing asked before a handshake confirms the relay path
    # A handshake through the bridge: the relay path stands, the node asks and binds.
    await plan(0.5, read(BRIDGE, 100, T0 + timedelta(seconds=0.4)))
    assert session.asked == ["node_b"]
    trying = await plan(0.6, read(BRIDGE, 100, T0 + timedelta(seconds=0.4)))
    assert trying.endpoints[KEY_B] == RELAY
    assert [target for target, _ in sender.binds] == [RELAY]
    assert keeper.transport("node_b") == "wss"  # not proven yet
    # The tunnel's own packets at the granted address: up, and still the relay path.
    await plan(0.9, read(RELAY, 100, T0 + timedelta(seconds=0.4)))
    up = await plan(1.2, read(RELAY, 180, T0 + timedelta(seconds=0.4)))
    assert keeper.transport("node_b") == "udp"
    assert up.endpoints[KEY_B] == RELAY
    for second in (1.5, 3.0, 6.0):  # keepalives keep coming: never taken for a direct path
        await plan(second, read(RELAY, 180 + int(100 * second), T0 + timedelta(seconds=0.4)))
        assert keeper.path_of("node_b") == "relay"
    assert keeper.transport("node_b") == "udp"
    # A new relay session: the relay dropped the allocation; start again on the bridge.
    current[0] = Session()
    again = await plan(6.5, read(RELAY, 900, T0 + timedelta(seconds=0.4)))
    assert keeper.transport("node_b") == "wss"
    assert again.endpoints[KEY_B] == BRIDGE


class Refusing:
    """A relay session without `[udp]`: every ask is refused as `unavailable`."""

    def __init__(self) -> None:
        self.asked = 0

    async def allocate_udp(self, peer: str) -> UdpGrant:
        self.asked += 1
        raise AllocationRefusedError("unavailable")


async def test_a_relay_without_udp_sessions_is_asked_once_per_session_and_the_bridge_stays() -> (
    None
):
    clock = FakeClock(T0)
    session = Refusing()
    keeper = make_keeper(clock, Sender(), lambda: session)
    for tenth in range(1, 400, 7):  # 40 s: several retry intervals
        clock.current = T0 + timedelta(seconds=tenth / 10)
        handshake = T0 + timedelta(seconds=0.2)
        plan = await keeper.endpoints(clock.now(), read(BRIDGE, tenth, handshake))
        await asyncio.sleep(0)
        assert plan.endpoints[KEY_B] == BRIDGE
    assert session.asked == 1
    assert keeper.transport("node_b") == "wss"


class Hostile:
    """A relay session whose grants are unusable: first another peer's, then a loopback
    address, then a good one."""

    def __init__(self) -> None:
        self.asked = 0

    async def allocate_udp(self, peer: str) -> UdpGrant:
        self.asked += 1
        if self.asked == 1:
            return UdpGrant("node_x", bytes(16), str(RELAY.address), RELAY.port, bytes(32), T0)
        address = "127.0.0.1" if self.asked == 2 else str(RELAY.address)
        return UdpGrant(peer, bytes(16), address, RELAY.port, bytes(32), T0)


async def test_unusable_grants_are_refused_and_asked_again_after_the_backoff() -> None:
    clock = FakeClock(T0)
    session, sender = Hostile(), Sender()
    keeper = make_keeper(clock, sender, lambda: session)
    pointed = []
    for tenth in range(1, 400, 5):
        clock.current = T0 + timedelta(seconds=tenth / 10)
        handshake = clock.now() - timedelta(seconds=0.05)  # the session runs through the bridge
        plan = await keeper.endpoints(clock.now(), read(BRIDGE, tenth, handshake))
        await asyncio.sleep(0)
        if KEY_B in plan.endpoints:
            pointed.append(plan.endpoints[KEY_B])
    assert session.asked == 3  # refused twice, each time asked again after the backoff
    assert {target for target, _ in sender.binds} == {RELAY}  # never a bind elsewhere
    assert set(pointed) == {BRIDGE, RELAY}  # never the other peer's or the loopback grant
