"""One conformance suite for the `TunnelBackend` port, run against every adapter.

Backends: in-memory (all capabilities but relays), in-memory IPv4-only (to see refusals of
IPv6 and exit routing), wireguard-go in a fresh network namespace (root; real TUN, real UAPI,
real rtnetlink), and kernel WireGuard (skipped with its own availability message when the
module is missing, as on the lab machines). Probes read the real system (`ip`, the socket
directory) for the real backends, never the adapter's own memory.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import attrs
import pytest
import pytest_asyncio
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend
from rustynet.adapters.tunnel.wireguard_kernel import WireGuardKernelBackend
from rustynet.adapters.tunnel.wireguard_uapi import WireGuardUapiBackend

from rustynet.domain.keys import TunnelKey, TunnelKeyScheme, TunnelPrivateKey
from rustynet.domain.tunnel import (
    Capability,
    InterfaceConfig,
    IPNetwork,
    PeerConfig,
    PeerDiff,
    diff_peers,
)
from rustynet.ports.tunnel import (
    BackendUnavailable,
    TunnelBackend,
    TunnelError,
    UnsupportedCapability,
)
from tests.netns import Namespace, NetLab, require_root

BACKENDS = [
    "memory",
    "memory-v4only",
    pytest.param("userspace", marks=pytest.mark.root),
    pytest.param("kernel", marks=pytest.mark.root),
]
ROUTE_PROTO = "147"  # links.ROUTE_PROTO, read back through ip(8)


def private_key() -> TunnelPrivateKey:
    """A fresh tunnel private key (test randomness from the OS)."""
    return TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, os.urandom(32))


def peer_key() -> TunnelKey:
    """A random peer public key."""
    return TunnelKey(TunnelKeyScheme.X25519, os.urandom(32))


def peer(n: int, **kw: object) -> PeerConfig:
    """Peer n owning 100.65.(n // 256).(n % 256)/32, with a fresh key unless given."""
    key = kw.pop("key", None) or peer_key()
    return PeerConfig(key, [f"100.65.{n // 256}.{n % 256}/32"], **kw)  # type: ignore[arg-type]


@attrs.define
class Harness:
    """A backend plus probes that look at the system it changed."""

    backend: TunnelBackend
    config: InterfaceConfig
    changes: Callable[[], int]
    interface_exists: Callable[[], bool]
    routes: Callable[[], set[IPNetwork]]
    leftovers: Callable[[], list[str]]
    """Sockets/processes the backend must not leave after stop (empty when clean)."""
    carries_traffic: bool
    lab: NetLab | None = None
    namespace: Namespace | None = None
    pids: list[int] = attrs.Factory(list)


def _ip_routes(ns: Namespace) -> set[IPNetwork]:
    out: set[IPNetwork] = set()
    for family in ("-4", "-6"):
        text = ns.ip(family, "-j", "route", "show", "proto", ROUTE_PROTO, "table", "main")
        for route in json.loads(text or "[]"):
            dst = route["dst"]
            if dst == "default":
                dst = "0.0.0.0/0" if family == "-4" else "::/0"
            out.add(
                ipaddress.ip_network(
                    dst if "/" in dst else f"{dst}/{32 if family == '-4' else 128}"
                )
            )
    return out


def _config(name: str) -> InterfaceConfig:
    return InterfaceConfig(name, private_key(), None, ["100.64.1.1/32"], ["100.64.0.0/10"])


def _memory_harness(capabilities: frozenset[Capability] | None) -> Harness:
    backend = MemoryTunnelBackend() if capabilities is None else MemoryTunnelBackend(capabilities)
    return Harness(
        backend=backend,
        config=_config("rnmem0"),
        changes=lambda: backend.change_operations,
        interface_exists=lambda: backend.interface is not None,
        routes=lambda: set(backend.installed_routes),
        leftovers=list,
        carries_traffic=False,
    )


def _userspace_harness(lab: NetLab) -> Harness:
    ns = lab.namespace()
    backend = WireGuardUapiBackend(netns=ns.name)
    name = lab.interface_name()
    pids: list[int] = []

    def leftovers() -> list[str]:
        found = [str(p) for p in [backend.socket_path(name)] if p.exists()]
        found += [f"pid {pid}" for pid in pids if Path(f"/proc/{pid}").exists()]
        return found

    harness = Harness(
        backend=backend,
        config=_config(name),
        changes=lambda: backend.change_operations,
        interface_exists=lambda: name in ns.links(),
        routes=lambda: _ip_routes(ns),
        leftovers=leftovers,
        carries_traffic=True,
        lab=lab,
        namespace=ns,
    )
    harness.pids = pids
    return harness


@pytest.fixture
def lab() -> Iterator[NetLab]:
    """A namespace lab removed after the test, even on failure."""
    with NetLab() as netlab:
        yield netlab


@pytest_asyncio.fixture(params=BACKENDS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Each backend, stopped after the test (and its namespaces removed)."""
    kind: str = request.param
    if kind == "memory":
        h = _memory_harness(None)
    elif kind == "memory-v4only":
        h = _memory_harness(frozenset({Capability.ROAMING}))
    else:
        require_root("ip", "wireguard-go" if kind == "userspace" else "ip")
        if kind == "kernel":
            try:
                await WireGuardKernelBackend().check_available()
            except BackendUnavailable as exc:
                pytest.skip(str(exc))
        netlab = NetLab()
        try:
            h = _userspace_harness(netlab) if kind == "userspace" else _kernel_harness(netlab)
        except BaseException:
            netlab.close()
            raise
    try:
        yield h
    finally:
        try:
            await h.backend.stop()
        finally:
            if h.lab is not None:
                h.lab.close()


def _kernel_harness(lab: NetLab) -> Harness:  # pragma: no cover - needs the kernel module
    ns = lab.namespace()
    backend = WireGuardKernelBackend(netns=ns.name)
    name = lab.interface_name()
    return Harness(
        backend=backend,
        config=_config(name),
        changes=lambda: backend.change_operations,
        interface_exists=lambda: name in ns.links(),
        routes=lambda: _ip_routes(ns),
        leftovers=list,
        carries_traffic=True,
        lab=lab,
        namespace=ns,
    )


async def started(h: Harness) -> TunnelBackend:
    """Start the harness backend and remember the helper PID it runs (if any)."""
    await h.backend.start(h.config)
    pid = getattr(h.backend, "pid", None)
    if pid is not None:
        h.pids.append(pid)
    return h.backend


async def converge(backend: TunnelBackend, desired: list[PeerConfig]) -> PeerDiff:
    """Diff actual against desired and apply it (what the reconciler does)."""
    diff = diff_peers(await backend.peers(), desired)
    await backend.apply(diff)
    return diff


# -- lifecycle -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_lifecycle_start_apply_read_back_stop(harness: Harness) -> None:
    """Start creates the interface with its routes; applied peers read back equal; stop clears."""
    backend = await started(harness)
    assert harness.interface_exists()
    assert harness.routes() == {ipaddress.ip_network("100.64.0.0/10")}
    desired = [
        peer(1),
        peer(2, keepalive_seconds=25),
        peer(3, underlay_endpoint="198.51.100.7:4000"),
    ]
    await converge(backend, desired)
    assert dict(await backend.peers()) == {p.key: p for p in desired}
    await backend.stop()
    assert not harness.interface_exists()


@pytest.mark.asyncio
async def test_start_twice_is_idempotent_and_keeps_peers(harness: Harness) -> None:
    """A second start with the same config changes nothing visible and keeps the peers."""
    backend = await started(harness)
    desired = [peer(1), peer(2)]
    await converge(backend, desired)
    await backend.start(harness.config)
    assert dict(await backend.peers()) == {p.key: p for p in desired}
    assert harness.routes() == {ipaddress.ip_network("100.64.0.0/10")}


@pytest.mark.asyncio
async def test_unstarted_backend_refuses_peer_operations(harness: Harness) -> None:
    """Reading or changing peers before start raises TunnelError (no silent empty answer)."""
    with pytest.raises(TunnelError):
        await harness.backend.peers()
    with pytest.raises(TunnelError):
        await harness.backend.apply(PeerDiff(add=(peer(1),)))


# -- idempotence and minimality --------------------------------------------------------------


@pytest.mark.asyncio
async def test_reapplying_the_same_state_issues_no_change(harness: Harness) -> None:
    """The second convergence to the same desired state is an empty diff and sends nothing."""
    backend = await started(harness)
    desired = [peer(i, keepalive_seconds=25 if i % 2 else None) for i in range(10)]
    first = await converge(backend, desired)
    assert first.touched == 10
    before = harness.changes()
    again = await converge(backend, desired)
    assert again.empty
    assert harness.changes() == before
    assert dict(await backend.peers()) == {p.key: p for p in desired}


@pytest.mark.asyncio
async def test_one_peer_change_on_fifty_touches_one_peer(harness: Harness) -> None:
    """Changing one peer of 50 is one update of one peer; the other 49 read back unchanged."""
    backend = await started(harness)
    desired = [peer(i) for i in range(50)]
    await converge(backend, desired)
    changed = PeerConfig(desired[17].key, ["100.65.0.17/32", "100.66.0.0/24"], None, 10)
    desired[17] = changed
    before = harness.changes()
    blocks_before = getattr(backend, "peer_blocks", 0)
    diff = await converge(backend, desired)
    assert diff == PeerDiff(update=(changed,))
    assert harness.changes() - before == 1
    if hasattr(backend, "peer_blocks"):
        assert backend.peer_blocks - blocks_before == 1
    assert dict(await backend.peers()) == {p.key: p for p in desired}


@pytest.mark.asyncio
async def test_removal_and_absent_peer_operations(harness: Harness) -> None:
    """Removing peers removes exactly them; removing an absent peer is not an error."""
    backend = await started(harness)
    desired = [peer(i) for i in range(4)]
    await converge(backend, desired)
    await converge(backend, desired[:2])
    assert set(await backend.peers()) == {desired[0].key, desired[1].key}
    await backend.apply(PeerDiff(remove=(peer_key(),)))
    assert set(await backend.peers()) == {desired[0].key, desired[1].key}


# -- routes and addresses --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_set_routes_replaces_exactly(harness: Harness) -> None:
    """set_routes leaves exactly the given routes (ours), adding and removing as needed."""
    backend = await started(harness)
    a, b, c = (ipaddress.ip_network(n) for n in ("100.70.0.0/16", "100.71.0.0/16", "100.72.0.0/24"))
    await backend.set_routes([a, b])
    assert harness.routes() == {a, b}
    await backend.set_routes([b, c])
    assert harness.routes() == {b, c}
    await backend.set_routes([])
    assert harness.routes() == set()


@pytest.mark.asyncio
async def test_set_addresses_replaces_exactly(harness: Harness) -> None:
    """set_addresses leaves exactly the given addresses on the interface."""
    backend = await started(harness)
    await backend.set_addresses(["100.64.1.2/32", "100.64.1.3/32"])  # type: ignore[list-item]
    if harness.namespace is not None:
        text = harness.namespace.ip("-4", "-o", "addr", "show", "dev", harness.config.name)
        assert sorted(line.split()[3] for line in text.splitlines()) == [
            "100.64.1.2/32",
            "100.64.1.3/32",
        ]


# -- capabilities ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_missing_capability_is_refused_and_changes_nothing(harness: Harness) -> None:
    """Asking for a capability the backend lacks raises UnsupportedCapability; state unchanged."""
    backend = await started(harness)
    desired = [peer(1)]
    await converge(backend, desired)
    missing = frozenset(Capability) - backend.capabilities()
    if not missing:
        backend.require(*Capability)
        pytest.skip(f"{backend.name} has every capability: nothing it could refuse")
    before = (dict(await backend.peers()), harness.routes(), harness.changes())
    with pytest.raises(UnsupportedCapability) as info:
        backend.require(*missing)
    assert info.value.missing == missing
    backend.require(*backend.capabilities())  # what it has is fine
    assert (dict(await backend.peers()), harness.routes(), harness.changes()) == before


@pytest.mark.asyncio
async def test_ipv6_and_exit_routes_follow_capabilities(harness: Harness) -> None:
    """IPv6 peers/routes and /0 routes apply only with the capability; else refused, no change."""
    backend = await started(harness)
    await converge(backend, [peer(1)])
    v6_peer = PeerConfig(peer_key(), ["fd7a:115c:a1e0::2/128"], "[2001:db8::2]:41641")
    v6_route = ipaddress.ip_network("fd7a:115c:a1e0::/48")
    default = ipaddress.ip_network("0.0.0.0/0")
    before = (dict(await backend.peers()), harness.routes(), harness.changes())
    caps = backend.capabilities()
    if Capability.IPV6 in caps:
        await backend.apply(PeerDiff(add=(v6_peer,)))
        assert (await backend.peers())[v6_peer.key] == v6_peer
        await backend.set_routes([ipaddress.ip_network("100.64.0.0/10"), v6_route])
        assert v6_route in harness.routes()
    else:
        with pytest.raises(UnsupportedCapability):
            await backend.apply(PeerDiff(add=(v6_peer,)))
        with pytest.raises(UnsupportedCapability):
            await backend.set_routes([v6_route])
        assert (dict(await backend.peers()), harness.routes(), harness.changes()) == before
    if Capability.EXIT_ROUTING not in caps:
        with pytest.raises(UnsupportedCapability):
            await backend.set_routes([default])
        assert default not in harness.routes()


# -- teardown --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_teardown_leaves_no_interface_socket_route_or_process(harness: Harness) -> None:
    """After stop: no interface, none of our routes, no control socket, no helper process."""
    backend = await started(harness)
    await converge(backend, [peer(i) for i in range(3)])
    await backend.set_routes(["100.70.0.0/16", "100.64.0.0/10"])  # type: ignore[list-item]
    await backend.stop()
    assert not harness.interface_exists()
    assert harness.routes() == set()
    assert harness.leftovers() == []
    await backend.stop()  # idempotent
    assert not harness.interface_exists()


@pytest.mark.asyncio
async def test_stop_without_start_does_nothing(harness: Harness) -> None:
    """Stopping a never-started backend is a no-op, not an error."""
    await harness.backend.stop()
    assert not harness.interface_exists()


@pytest.mark.asyncio
async def test_private_key_never_in_argv_or_environment(harness: Harness) -> None:
    """A helper process the backend runs shows the private key in neither argv nor environ."""
    backend = await started(harness)
    pid = getattr(backend, "pid", None)
    if pid is None:
        pytest.skip(f"{backend.name} runs no helper process")
    secret = harness.config.private_key.export_secret()
    forms = [
        bytes(secret).hex().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret).rstrip(b"="),
    ]
    exposed = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
    assert [f for f in forms if f in exposed] == []
    assert b"-f" in exposed  # the right process was read


# -- stats -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stats_are_real(harness: Harness) -> None:
    """Real backends: two namespaces on a veth ping over the overlay; handshake and bytes show.

    The in-memory backend carries nothing, so it must report zero bytes and no handshake.
    Only A knows B's underlay endpoint, so only A initiates (no handshake collision).
    """
    if not harness.carries_traffic:
        backend = await started(harness)
        await converge(backend, [peer(1)])
        (stats,) = (await backend.stats()).values()
        assert (stats.last_handshake, stats.rx_bytes, stats.tx_bytes) == (None, 0, 0)
        return
    assert harness.lab is not None
    assert harness.namespace is not None
    lab, ns_a = harness.lab, harness.namespace
    ns_b = lab.namespace()
    lab.veth(ns_a, "198.51.100.1/24", ns_b, "198.51.100.2/24")
    a = harness.backend
    b = type(a)(netns=ns_b.name)  # type: ignore[call-arg]
    key_a, key_b = private_key(), private_key()
    cfg_a = InterfaceConfig(harness.config.name, key_a, 51820, ["100.64.0.1/32"], ["100.64.0.0/10"])
    cfg_b = InterfaceConfig(
        lab.interface_name(), key_b, 51820, ["100.64.0.2/32"], ["100.64.0.0/10"]
    )
    try:
        await a.start(cfg_a)
        await b.start(cfg_b)
        await a.apply(
            PeerDiff(add=(PeerConfig(key_b.public_key, ["100.64.0.2/32"], "198.51.100.2:51820"),))
        )
        want_b = PeerConfig(key_a.public_key, ["100.64.0.1/32"])
        await b.apply(PeerDiff(add=(want_b,)))
        result = ns_a.run("ping", "-c", "3", "-i", "0.2", "-W", "2", "100.64.0.2", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        stats_a = (await a.stats())[key_b.public_key]
        stats_b = (await b.stats())[key_a.public_key]
        assert stats_a.last_handshake is not None
        assert stats_a.rx_bytes > 0
        assert stats_a.tx_bytes > 0
        assert stats_b.last_handshake is not None
        assert stats_b.rx_bytes > 0
        assert stats_b.tx_bytes > 0
        assert str(stats_b.underlay_endpoint) == "198.51.100.1:51820"  # learned (roaming)
        assert diff_peers(await b.peers(), [want_b]).empty  # learned endpoint is no change
    finally:
        await b.stop()


@pytest.mark.asyncio
async def test_kernel_backend_reports_why_it_is_unavailable() -> None:
    """Without the module, check_available raises BackendUnavailable naming the cause."""
    try:
        await WireGuardKernelBackend().check_available()
    except BackendUnavailable as exc:
        message = str(exc)
    else:
        pytest.skip("kernel WireGuard is available here: the contract suite runs it")
    print(f"kernel backend unavailable here: {message}")
    assert "kernel WireGuard is unavailable" in message
