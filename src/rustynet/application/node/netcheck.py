"""`rustynet netcheck`: what the network around a node looks like, as one stable document.

The one rule: the daemon (`GET /netcheck`, measuring the tunnel port when its NatProbe can)
and the standalone CLI (an ephemeral port) both call `run_netcheck`, and `build_document` is
the only place the document is shaped, so both paths print the same thing. The document
(docs/operations/nodes.md, "netcheck") holds addresses, ports, classifications and round-trip
times only: no token, no key, nothing secret, so a user can paste it into a bug report.

Time bound: every STUN probe and every connect runs concurrently under the adapters' own
deadlines (about 1.5 s), so netcheck ends within a few seconds even when everything is blocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, Literal
from urllib.parse import urlsplit

import attrs

from rustynet.application.node.nat_discovery import probe_targets, tunnel_addresses
from rustynet.domain.errors import RustynetError
from rustynet.domain.nat import NatReport, StunObservation, classify
from rustynet.domain.netmap import PeerMap
from rustynet.domain.tunnel import IPAddress, UnderlayEndpoint
from rustynet.ports.interfaces import InterfaceAddresses, NatProbe, ProbeUnavailableError
from rustynet.ports.netcheck import ConnectLatency

DOCUMENT_VERSION: Final = 1
Measured = Literal["tunnel-port", "ephemeral-port"]


@attrs.frozen
class LatencyTarget:
    """A host to time: `kind` control or relay, its id (relays), host and TCP port."""

    kind: Literal["control", "relay"]
    id: str | None
    host: str
    port: int

    @classmethod
    def from_url(
        cls, kind: Literal["control", "relay"], target_id: str | None, url: str
    ) -> LatencyTarget | None:
        """From an https:// or wss:// URL (port 443 by default); None if it has no host."""
        try:
            parts = urlsplit(url)
            port = parts.port or 443
        except ValueError:
            return None
        if not parts.hostname:
            return None
        return cls(kind, target_id, parts.hostname, port)


@attrs.frozen
class Latency:
    """One target's TCP connect time in seconds (None: no connection before the deadline)."""

    target: LatencyTarget
    rtt: float | None


@attrs.frozen
class NetcheckTargets:
    """What to measure: the STUN servers (peer map or `--stun`), the control plane, relays."""

    stun: tuple[UnderlayEndpoint, ...]
    latency: tuple[LatencyTarget, ...] = ()


def _endpoint(e: UnderlayEndpoint | None) -> str | None:
    if e is None:
        return None
    return f"{e.address}:{e.port}" if e.address.version == 4 else f"[{e.address}]:{e.port}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _family(report: NatReport | None) -> dict[str, object] | None:
    if report is None:
        return None
    answered = sum(1 for o in report.observations if o.mapped is not None)
    return {
        "reachable": answered > 0,
        "answered": answered,
        "asked": len(report.observations),
        "nat": report.nat.value,
        "description": report.nat.description,
        "reflexive": [_endpoint(e) for e in report.reflexive],
        "port_preserved": report.port_preserved,
        "servers": [
            {"server": _endpoint(o.server), "mapped": _endpoint(o.mapped), "rtt_ms": _ms(o.rtt)}
            for o in report.observations
        ],
    }


def build_document(
    measured: Measured,
    local_port: int,
    observations: Sequence[StunObservation],
    local_addresses: Iterable[IPAddress],
    latencies: Sequence[Latency] = (),
    *,
    probe_error: str | None = None,
) -> dict[str, object]:
    """The netcheck document (version 1) from one port's observations (both families);
    `probe_error`: the probe could not run, so `udp` is unknown (null), not false."""
    own = tuple(local_addresses)
    reports: dict[int, NatReport | None] = {}
    for version in (4, 6):
        of_family = [o for o in observations if o.server.address.version == version]
        reports[version] = classify(of_family, local_port, own) if of_family else None
    v4 = _family(reports[4])
    return {
        "netcheck": DOCUMENT_VERSION,
        "measured": measured,
        "local_port": local_port,
        "udp": None
        if probe_error is not None
        else bool(v4 and v4["reachable"]) or bool(reports[6] and reports[6].reflexive),
        "probe_error": probe_error,
        "ipv4": v4,
        "ipv6": _family(reports[6]),
        "skipped": [],
        "latency": [
            {
                "kind": lat.target.kind,
                "id": lat.target.id,
                "target": f"{lat.target.host}:{lat.target.port}",
                "method": "tcp-connect",
                "rtt_ms": _ms(lat.rtt),
            }
            for lat in latencies
        ],
    }


def _flatten(addresses: Mapping[str, tuple[IPAddress, ...]]) -> tuple[IPAddress, ...]:
    return tuple(a for values in addresses.values() for a in values)


@attrs.frozen
class NetcheckTools:
    """The adapters netcheck measures with (the daemon's or the standalone CLI's).

    `tunnel_port`: the probe sends from the tunnel's own port when given it (the daemon's
    tunnel-port probe); otherwise netcheck asks `ephemeral_port` for a free local port.
    """

    probe: NatProbe
    latency: ConnectLatency
    interfaces: InterfaceAddresses | None
    ephemeral_port: Callable[[], int]
    tunnel_port: bool = False


def targets_from_map(peer_map: PeerMap, control_url: str) -> NetcheckTargets:
    """The daemon's targets: the signed map's STUN servers and relays, and its control plane."""
    latency = [LatencyTarget.from_url("control", None, control_url)]
    latency += [LatencyTarget.from_url("relay", r.id, r.url) for r in peer_map.relays]
    return NetcheckTargets(
        tuple(UnderlayEndpoint.parse(s) for s in peer_map.stun),
        tuple(t for t in latency if t is not None),
    )


async def daemon_netcheck(
    tools: NetcheckTools, peer_map: PeerMap, control_url: str, tunnel_port: int | None
) -> dict[str, object]:
    """`GET /netcheck`: from the tunnel port when the probe can send from it, else from an
    ephemeral port (and the document says which). From the tunnel port, a STUN server whose
    address the tunnel talks to is never probed (`nat_discovery.probe_targets`): it is listed
    under `skipped`."""
    targets = targets_from_map(peer_map, control_url)
    if tools.tunnel_port and tunnel_port:
        safe, skipped = probe_targets(targets.stun, tunnel_addresses(peer_map))
        targets = attrs.evolve(targets, stun=safe)
        document = await run_netcheck(tools, targets, tunnel_port, "tunnel-port")
        document["skipped"] = [_endpoint(s) for s in skipped]
        return document
    return await run_netcheck(tools, targets, tools.ephemeral_port(), "ephemeral-port")


async def run_netcheck(
    tools: NetcheckTools, targets: NetcheckTargets, port: int, measured: Measured
) -> dict[str, object]:
    """Probe `targets.stun` from local UDP `port`, time every latency target, concurrently;
    the document `build_document` shapes."""
    probe, latency, interfaces = tools.probe, tools.latency, tools.interfaces
    timed = asyncio.gather(*(latency.connect(t.host, t.port) for t in targets.latency))
    probe_error: str | None = None
    try:
        observed, rtts = await asyncio.gather(probe.observe(targets.stun, port), timed)
    except ProbeUnavailableError as exc:
        observed, rtts, probe_error = (), await timed, str(exc)
    addresses: Mapping[str, tuple[IPAddress, ...]] = {}
    if interfaces is not None:
        try:
            addresses = await interfaces.addresses()
        except RustynetError:  # ip(8) failed: no address is known to be ours (never `public`)
            addresses = {}
    return build_document(
        measured,
        port,
        observed,
        _flatten(addresses),
        [Latency(t, r) for t, r in zip(targets.latency, rtts, strict=True)],
        probe_error=probe_error,
    )


__all__ = [
    "DOCUMENT_VERSION",
    "Latency",
    "LatencyTarget",
    "Measured",
    "NetcheckTargets",
    "NetcheckTools",
    "build_document",
    "daemon_netcheck",
    "run_netcheck",
    "targets_from_map",
]
