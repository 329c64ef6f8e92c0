"""Sending as if from the tunnel's UDP port, and the STUN probe built on it (`NatProbe`).

wireguard-go owns the tunnel port, so discovery packets leave from an ephemeral socket and an
nftables rule in the node's own namespace rewrites their source port on the way out::

    table ip rustynet-probe-<probe port> {          # ip6 for IPv6 destinations
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            udp sport <probe port> ip daddr { <destinations> } snat to :<tunnel port>
        }
    }

The router in front then maps the probe exactly like tunnel traffic, and conntrack hands the
reply back to the probe socket, not to wireguard-go. The one rule (`sending_as_tunnel_port`):
the table lives only while the caller sends, and on the way out (also on error or
cancellation) the table is deleted and then every conntrack entry the probe socket made
(`conntrack -D -p udp --orig-port-src <probe port>`): a leftover entry would collide with real
tunnel traffic to the same address and port, and the kernel would then silently rewrite the
tunnel's source port. Which destinations are safe to send to (never one the tunnel talks to)
is decided by the caller (`rustynet.application.node.nat_discovery`); this module does what it
is asked. One table per probe socket, so concurrent users (discovery, netcheck, pre-punch
packets) never touch each other's rule. `port=None` skips the rule: a plain ephemeral socket
(standalone netcheck). IPv6 destinations get the same rule in an `ip6` table.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Sequence

import structlog
from rustynet.adapters.stun.client import ProbeCounters, observe_all
from rustynet.adapters.support.system_tools import Json, ToolError, nft_json, run_tool

from rustynet.domain.entropy import Entropy
from rustynet.domain.nat import StunObservation
from rustynet.domain.tunnel import UnderlayEndpoint
from rustynet.ports.interfaces import ProbeUnavailableError

_log = structlog.get_logger(__name__)
DEADLINE_S = 1.5
_SRCNAT = 100


class ProbeSetupError(Exception):
    """The source-port rewrite could not be installed (nft refused or is missing)."""


def table_name(probe_port: int) -> str:
    """The nftables table a probe socket's rule lives in."""
    return f"rustynet-probe-{probe_port}"


def rewrite_batch(
    version: int, probe_port: int, tunnel_port: int, addresses: Sequence[str]
) -> list[Json]:
    """The one nft transaction that installs the rewrite (table recreated from scratch)."""
    family, proto = ("ip", "ip") if version == 4 else ("ip6", "ip6")
    table = table_name(probe_port)
    ref = {"table": {"family": family, "name": table}}
    return [
        {"add": ref},
        {"delete": ref},
        {"add": ref},
        {
            "add": {
                "chain": {
                    "family": family,
                    "table": table,
                    "name": "postrouting",
                    "type": "nat",
                    "hook": "postrouting",
                    "prio": _SRCNAT,
                    "policy": "accept",
                }
            }
        },
        {
            "add": {
                "rule": {
                    "family": family,
                    "table": table,
                    "chain": "postrouting",
                    "expr": [
                        _eq({"payload": {"protocol": "udp", "field": "sport"}}, probe_port),
                        _eq(
                            {"payload": {"protocol": proto, "field": "daddr"}},
                            {"set": sorted(set(addresses))},
                        ),
                        {"snat": {"port": tunnel_port}},
                    ],
                }
            }
        },
    ]


def _eq(left: Json, right: Json) -> Json:
    return {"match": {"op": "==", "left": left, "right": right}}


async def cleanup(version: int, probe_port: int, *, netns: str | None = None) -> None:
    """Delete the probe's table, then its conntrack entries; failures are logged, not raised
    (the next probe uses a fresh port and a fresh table)."""
    family = "ip" if version == 4 else "ip6"
    ref = {"table": {"family": family, "name": table_name(probe_port)}}
    try:
        await nft_json(
            ["-j", "-f", "-"], {"nftables": [{"add": ref}, {"delete": ref}]}, netns=netns
        )
    except ToolError as exc:
        _log.warning("stun.probe_rule_not_removed", probe_port=probe_port, error=str(exc)[:200])
    argv = ["conntrack", "-D", "-f", "ipv4" if version == 4 else "ipv6"]
    argv += ["-p", "udp", "--orig-port-src", str(probe_port)]
    try:
        await run_tool(argv, netns=netns)
    except ToolError as exc:
        if exc.returncode != 1:  # 1: "0 flow entries have been deleted" (nothing was left)
            _log.warning("stun.probe_conntrack_left", probe_port=probe_port, error=str(exc)[:200])


@contextlib.asynccontextmanager
async def sending_as_tunnel_port(
    tunnel_port: int | None,
    destinations: Sequence[UnderlayEndpoint],
    *,
    version: int = 4,
    netns: str | None = None,
) -> AsyncIterator[socket.socket]:
    """A fresh non-blocking UDP socket whose datagrams to `destinations` leave with source
    port `tunnel_port` (None: no rewrite, the socket's own ephemeral port); the rule and its
    conntrack entries are gone when the block exits."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(("0.0.0.0" if version == 4 else "::", 0))  # noqa: S104 - replies come back here
        sock.setblocking(False)
        probe_port = int(sock.getsockname()[1])
        if tunnel_port is None:
            yield sock
            return
        addresses = [str(d.address) for d in destinations if d.address.version == version]
        if not addresses:
            raise ProbeSetupError("no destination of the socket's address family")
        batch = rewrite_batch(version, probe_port, tunnel_port, addresses)
        try:
            await nft_json(["-j", "-f", "-"], {"nftables": batch}, netns=netns)
        except ToolError as exc:
            raise ProbeSetupError(f"cannot install the probe rule: {exc}") from exc
        try:
            yield sock
        finally:
            await cleanup(version, probe_port, netns=netns)
    finally:
        sock.close()


class TunnelPortProbe:
    """`NatProbe`: Binding requests to STUN servers as if from the tunnel port (or, with
    `port=None`, from one ephemeral port), all at once, answers within `deadline` seconds."""

    def __init__(
        self,
        entropy: Entropy,
        *,
        deadline: float = DEADLINE_S,
        netns: str | None = None,
        counters: ProbeCounters | None = None,
    ) -> None:
        self._entropy = entropy
        self._deadline = deadline
        self._netns = netns
        self.counters = counters if counters is not None else ProbeCounters()

    async def observe(
        self, servers: Sequence[UnderlayEndpoint], port: int | None
    ) -> tuple[StunObservation, ...]:
        """One observation per server, in order; one socket per address family."""
        found: dict[UnderlayEndpoint, StunObservation] = {}
        for version in (4, 6):
            group = [s for s in servers if s.address.version == version]
            if group:
                found.update(
                    (o.server, o) for o in await self._observe_family(group, port, version)
                )
        return tuple(found.get(s, StunObservation(s, None)) for s in servers)

    async def _observe_family(
        self, servers: list[UnderlayEndpoint], port: int | None, version: int
    ) -> list[StunObservation]:
        try:
            async with sending_as_tunnel_port(
                port, servers, version=version, netns=self._netns
            ) as sock:
                return await observe_all(
                    sock, servers, self._entropy, self._deadline, self.counters
                )
        except ProbeSetupError as exc:  # nothing was sent: not a finding about the network
            raise ProbeUnavailableError(str(exc)[:200]) from exc
        except OSError as exc:  # e.g. no route for this family: nothing answered
            _log.warning("stun.probe_failed", version=version, error=str(exc)[:200])
            return []


__all__ = [
    "DEADLINE_S",
    "ProbeSetupError",
    "TunnelPortProbe",
    "cleanup",
    "rewrite_batch",
    "sending_as_tunnel_port",
    "table_name",
]
