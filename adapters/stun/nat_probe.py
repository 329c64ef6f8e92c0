"""A NatProbe (`rustynet.ports.interfaces.NatProbe`) from a plain UDP socket on a port it binds.

The one rule: one socket per address family, bound to the asked local port (an ephemeral one
for None) without any source-port rewrite, asks every server at once through
`client.probe_all` (one deadline for all: N blocked servers take `timeout`, not N x
`timeout`; only answers from the queried address with our transaction id count). This is the
probe of a standalone `rustynet netcheck` (which must know its local port to judge port
preservation) and of a daemon without a tunnel port; the daemon's tunnel port is measured by
`tunnel_port.TunnelPortProbe`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Sequence

from rustynet.adapters.stun.client import ProbeCounters, observe_all

from rustynet.domain.entropy import Entropy
from rustynet.domain.nat import StunObservation
from rustynet.domain.tunnel import UnderlayEndpoint

DEFAULT_TIMEOUT = 1.5


def _bind(family: socket.AddressFamily, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))  # noqa: S104
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def free_port() -> int:
    """A UDP port free on both families right now (the standalone netcheck's local port)."""
    for _ in range(20):
        with _bind(socket.AF_INET, 0) as v4:
            port = int(v4.getsockname()[1])
            try:
                _bind(socket.AF_INET6, port).close()
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:  # no IPv6 on this host: any v4 port is fine
                    return port
                continue
            return port
    raise OSError("no UDP port free on both IPv4 and IPv6")


class SocketNatProbe:
    """`NatProbe` from its own socket on the given port (None: an ephemeral one)."""

    def __init__(
        self,
        entropy: Entropy,
        timeout: float = DEFAULT_TIMEOUT,
        counters: ProbeCounters | None = None,
    ) -> None:
        self._entropy = entropy
        self._timeout = timeout
        self.counters = counters if counters is not None else ProbeCounters()

    async def observe(
        self, servers: Sequence[UnderlayEndpoint], port: int | None
    ) -> tuple[StunObservation, ...]:
        """One Binding request to each server from local UDP `port`, all families at once."""
        local = free_port() if port is None else port
        groups = [
            (family, [s for s in servers if s.address.version == version])
            for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6))
        ]
        results = await asyncio.gather(*(self._family(f, g, local) for f, g in groups if g))
        found = {o.server: o for result in results for o in result}
        return tuple(found.get(s, StunObservation(s, None)) for s in servers)

    async def _family(
        self, family: socket.AddressFamily, servers: list[UnderlayEndpoint], port: int
    ) -> list[StunObservation]:
        try:
            with _bind(family, port) as sock:
                return await observe_all(sock, servers, self._entropy, self._timeout, self.counters)
        except OSError:  # this family unusable here (no address, no route): unanswered
            return [StunObservation(s, None) for s in servers]


__all__ = ["DEFAULT_TIMEOUT", "SocketNatProbe", "free_port"]
